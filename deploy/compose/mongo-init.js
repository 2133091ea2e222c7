// Makes the single mongod of deploy/compose.yaml a one-member replica set (rs0), once, and
// waits until it is primary. Run by the mongodb-init service; safe to run again.
try {
  rs.status();
  print("replica set rs0 already initiated");
} catch (e) {
  if (e.codeName !== "NotYetInitialized") throw e;
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongodb:27017" }] });
  print("replica set rs0 initiated");
}
let tries = 0;
while (!db.hello().isWritablePrimary) {
  if (++tries > 120) throw new Error("mongodb did not become primary within 60s");
  sleep(500);
}
print("mongodb is primary");
