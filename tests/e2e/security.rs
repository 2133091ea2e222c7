//! Security specs: etcd over TLS with client certificates, etcd users with least-privilege
//! roles (`cronmesh admin etcd-roles`), and signed jobs (workers run only what a master signed).

use crate::certs::{Ca, CertFiles};
use crate::harness::*;
use cronmesh::config::EtcdTlsFiles;
use cronmesh::coord::{Access, Coord};
use cronmesh::etcd_process::{EtcdProcess, EtcdTls, free_port};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A one-member etcd that speaks TLS only and requires client certificates signed by `ca`.
async fn start_tls_etcd(dir: &Path, ca: &Ca, server: &CertFiles) -> EtcdProcess {
    let tls = EtcdTls {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: Some(ca.cert.clone()),
    };
    let mut last = None;
    for attempt in 0..5 {
        let d = dir.join(format!("etcd-tls-{attempt}"));
        match EtcdProcess::start_single_tls("etcd", &d, free_port(), free_port(), free_port(), &tls) {
            Ok(mut p) => match p.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return p,
                Err(e) => last = Some(e.to_string()),
            },
            Err(e) => last = Some(e.to_string()),
        }
    }
    panic!("TLS etcd did not start: {last:?}");
}

/// Polls `f` until it gives something, or panics after `timeout` naming `what`.
async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn job(name: &str, command: &str) -> serde_json::Value {
    json!({"name": name, "schedule": "@every 1s", "command": command})
}

/// Waits until the master has a record of `job` with `status`, and returns it.
async fn wait_record(c: &Cluster, url: &str, job: &str, status: &str) -> cronmesh::model::RunRecord {
    poll(
        Duration::from_secs(30),
        &format!("a {status} record of {job}"),
        || async {
            c.api_runs(url, job)
                .await
                .into_iter()
                .find(|r| serde_json::to_value(r.status).unwrap() == json!(status))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_client_certificates_runs_jobs_and_bad_certificates_stop_the_process_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = Ca::new(&certs, "etcd");
    let server = ca.server("etcd-server");
    let client = ca.client("cronmesh");
    let etcd = start_tls_etcd(dir.path(), &ca, &server).await;
    assert!(etcd.client_url.starts_with("https://"));
    let access = Access {
        endpoints: vec![etcd.client_url.clone()],
        tls: Some(EtcdTlsFiles {
            ca_pem: Some(std::fs::read(&ca.cert).unwrap()),
            identity: Some((
                std::fs::read(&client.cert).unwrap(),
                std::fs::read(&client.key).unwrap(),
            )),
        }),
        user: None,
    };
    let coord = Coord::connect_with(&access, "/cm-test/", Duration::from_secs(5))
        .await
        .unwrap();
    coord
        .check_access()
        .await
        .expect("the test's own TLS client is accepted");
    let mut c = Cluster::with_etcd(dir, etcd, coord);
    let tls: Vec<String> = vec![
        "--etcd-ca".into(),
        s(&ca.cert),
        "--etcd-cert".into(),
        s(&client.cert),
        "--etcd-key".into(),
        s(&client.key),
    ];
    let tls_args: Vec<&str> = tls.iter().map(String::as_str).collect();
    let url = c.start_master("m1", &tls_args).await;
    c.start_worker("w1", &tls_args);
    let (status, body) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/tls-job",
            Some(ADMIN),
            Some(job("tls-job", "echo over-tls")),
        )
        .await;
    assert!(matches!(status, 200 | 201), "{body}");
    let rec = wait_record(&c, &url, "tls-job", "succeeded").await;
    assert_eq!(rec.worker, "w1");

    // each wrong setting stops a worker before it binds, naming the setting and the cause
    let other = Ca::new(&c.path("other"), "other");
    let stranger = other.client("stranger");
    let expired = ca.expired_client("old");
    let endpoint = c.etcd.client_url.clone();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let base = [
        "worker",
        "--etcd",
        &endpoint,
        "--prefix",
        "/cm-test/",
        "--listen",
        &listen,
    ];
    let missing_ca = c.path("missing-ca.pem");
    // (etcd.ca_file, etcd.cert_file, etcd.key_file) → the setting named and the cause
    type Case<'a> = (&'a Path, Option<&'a Path>, Option<&'a Path>, &'a str, &'a str);
    let cases: [Case; 7] = [
        (
            &other.cert,
            Some(&client.cert),
            Some(&client.key),
            "etcd.ca_file",
            "not trusted",
        ),
        (&ca.cert, None, None, "etcd.cert_file", "requires a client certificate"),
        (
            &ca.cert,
            Some(&stranger.cert),
            Some(&stranger.key),
            "etcd.cert_file",
            "refused this process' client certificate",
        ),
        (
            &ca.cert,
            Some(&expired.cert),
            Some(&expired.key),
            "etcd.cert_file",
            "expired on 2021-01-01",
        ),
        (&missing_ca, None, None, "etcd.ca_file", "no such file"),
        (&ca.cert, Some(&client.cert), None, "etcd.key_file", "set its key too"),
        (
            &ca.cert,
            Some(&client.key),
            Some(&client.key),
            "etcd.cert_file",
            "no PEM certificate",
        ),
    ];
    for (ca_file, cert_file, key_file, key, cause) in cases {
        let mut extra = vec!["--etcd-ca".to_string(), s(ca_file)];
        if let Some(f) = cert_file {
            extra.extend(["--etcd-cert".to_string(), s(f)]);
        }
        if let Some(f) = key_file {
            extra.extend(["--etcd-key".to_string(), s(f)]);
        }
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter().map(String::as_str));
        let (code, out) = c.run_cronmesh(&args, &[]).await;
        assert_ne!(code, Some(0), "{extra:?} must stop the worker: {out}");
        assert!(
            out.contains(key) && out.contains(cause),
            "{extra:?}: expected {key:?} and {cause:?} in: {out}"
        );
        assert!(
            std::net::TcpListener::bind(&listen).is_ok(),
            "{extra:?}: the worker must stop before binding {listen}"
        );
    }
}

/// A file holding `text`.
fn secret_file(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.path(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    s(&p)
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_users_with_the_roles_admin_prints_run_jobs_and_a_workers_credentials_cannot_write_jobs() {
    let mut c = Cluster::new().await;
    let endpoint = c.etcd.client_url.clone();
    // printed: the roles and their ranges, nothing applied
    let (code, out) = c
        .run_cronmesh(
            &["admin", "etcd-roles", "--etcd", &endpoint, "--prefix", "/cm-test/"],
            &[],
        )
        .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("etcdctl role grant-permission cronmesh-worker --prefix=true read /cm-test/"),
        "{out}"
    );
    assert!(
        out.contains("cronmesh-worker --prefix=true readwrite /cm-test/claims/"),
        "{out}"
    );
    assert!(
        !out.contains("readwrite /cm-test/jobs/"),
        "no role but the master's writes jobs/: {out}"
    );
    assert!(
        out.contains("cronmesh-master --prefix=true readwrite /cm-test/"),
        "{out}"
    );
    // applied: roles, users, then authentication on
    let master_pw = secret_file(&c, "master.pw", "master-password-1");
    let worker_pw = secret_file(&c, "worker.pw", "worker-password-1");
    let root_pw = secret_file(&c, "root.pw", "root-password-1");
    let (code, out) = c
        .run_cronmesh(
            &[
                "admin",
                "etcd-roles",
                "--etcd",
                &endpoint,
                "--prefix",
                "/cm-test/",
                "--apply",
                "--master-user",
                "m",
                "--master-password-file",
                &master_pw,
                "--worker-user",
                "w",
                "--worker-password-file",
                &worker_pw,
                "--enable-auth-root-password-file",
                &root_pw,
            ],
            &[],
        )
        .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("authentication enabled"), "{out}");
    let as_user = |user: &str, pw: &str| Access {
        endpoints: vec![endpoint.clone()],
        tls: None,
        user: Some((user.to_string(), pw.to_string())),
    };
    let root = Coord::connect_with(&as_user("root", "root-password-1"), "/cm-test/", Duration::from_secs(5))
        .await
        .unwrap();
    root.check_access().await.expect("root authenticates");
    c.coord = root;

    let url = c
        .start_master("m1", &["--etcd-user", "m", "--etcd-password-file", &master_pw])
        .await;
    c.start_worker_with(
        "w1",
        &["--etcd-user", "w"],
        &[],
        &[("CRONMESH_ETCD_PASSWORD", "worker-password-1")],
    );
    let (status, body) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/as-users",
            Some(ADMIN),
            Some(job("as-users", "echo hi")),
        )
        .await;
    assert!(matches!(status, 200 | 201), "{body}");
    let rec = wait_record(&c, &url, "as-users", "succeeded").await;
    assert_eq!(rec.worker, "w1", "the worker's user registered and claimed the tick");

    // the worker's credentials can read jobs, and cannot write one
    let worker = Coord::connect_with(&as_user("w", "worker-password-1"), "/cm-test/", Duration::from_secs(5))
        .await
        .unwrap();
    worker.check_access().await.expect("the worker's user reads jobs/");
    let spec: cronmesh::model::JobSpec = serde_json::from_value(job("planted", "touch /tmp/planted")).unwrap();
    let err = worker
        .put_job(spec)
        .await
        .expect_err("a worker's user may not write jobs/");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(c.coord.get_job("planted").await.unwrap().is_none());

    // a wrong password, and no user at all, stop a worker naming etcd.user
    let (code, out) = c
        .run_cronmesh(
            &[
                "worker",
                "--etcd",
                &endpoint,
                "--prefix",
                "/cm-test/",
                "--etcd-user",
                "w",
            ],
            &[("CRONMESH_ETCD_PASSWORD", "wrong")],
        )
        .await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("etcd.user") && out.contains("refused user \"w\""), "{out}");
    let (code, out) = c
        .run_cronmesh(&["worker", "--etcd", &endpoint, "--prefix", "/cm-test/"], &[])
        .await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("etcd.user") && out.contains("requires authentication"),
        "{out}"
    );
    // a user without a password never connects
    let (code, out) = c
        .run_cronmesh(&["worker", "--etcd", &endpoint, "--etcd-user", "w"], &[])
        .await;
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("etcd.user") && out.contains("needs a password"), "{out}");
}

/// `cronmesh admin keygen --out FILE`: the key file, the public key's PEM file, the key's id.
async fn keygen(c: &Cluster, name: &str) -> (String, String, String) {
    let key = c.path(&format!("{name}.pem"));
    let (code, out) = c.run_cronmesh(&["admin", "keygen", "--out", &s(&key)], &[]).await;
    assert_eq!(code, Some(0), "{out}");
    let public = out[out.find("-----BEGIN PUBLIC KEY-----").expect("a public key")..].to_string();
    let pub_file = c.path(&format!("{name}.pub"));
    std::fs::write(&pub_file, public).unwrap();
    let id = out
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .expect("the key's id")
        .to_string();
    (s(&key), s(&pub_file), id)
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_run_only_jobs_a_trusted_master_signed_and_a_new_key_can_be_trusted_before_the_old_is_retired() {
    let mut c = Cluster::new().await;
    let (key_a, pub_a, id_a) = keygen(&c, "a").await;
    let (key_b, pub_b, id_b) = keygen(&c, "b").await;
    let url = c.start_master("m1", &["--signing-key", &key_a]).await;
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    c.start_worker("w1", &["--trusted-keys", &pub_a, "--listen", &listen]);
    let ran = c.path("ran");
    let (status, body) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/signed",
            Some(ADMIN),
            Some(job("signed", "echo signed")),
        )
        .await;
    assert!(matches!(status, 200 | 201), "{body}");
    assert_eq!(
        body["signature"]["key"],
        json!(id_a),
        "the stored job carries its signature: {body}"
    );
    wait_record(&c, &url, "signed", "succeeded").await;

    // a job written straight into etcd (not by a master) is refused: skipped, nothing run
    let planted: cronmesh::model::JobSpec =
        serde_json::from_value(job("planted", &format!("touch {}", ran.display()))).unwrap();
    c.put_job(planted).await;
    let rec = wait_record(&c, &url, "planted", "skipped").await;
    assert!(rec.error.as_deref().unwrap_or("").starts_with("unsigned: "), "{rec:?}");
    // a signed job altered in etcd (its signature kept): the signature no longer verifies
    let mut raw = etcd_client::Client::connect([c.etcd.client_url.as_str()], None)
        .await
        .unwrap();
    let key = format!("{}jobs/signed", c.prefix);
    let value = raw.get(key.clone(), None).await.unwrap().kvs()[0].value().to_vec();
    let mut altered: serde_json::Value = serde_json::from_slice(&value).unwrap();
    assert!(altered["signature"]["sig"].is_string(), "{altered}");
    altered["command"] = json!(format!("touch {}", ran.display()));
    raw.put(key, serde_json::to_vec(&altered).unwrap(), None).await.unwrap();
    poll(Duration::from_secs(30), "the altered job is refused", || async {
        c.api_runs(&url, "signed")
            .await
            .into_iter()
            .find(|r| r.error.as_deref().unwrap_or("").starts_with("bad_signature: "))
    })
    .await;
    let metrics = scrape(&c, metrics_port).await;
    assert!(
        metrics.contains("cronmesh_jobs_refused_total{reason=\"unsigned\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cronmesh_jobs_refused_total{reason=\"bad_signature\"} 1"),
        "{metrics}"
    );
    assert!(!ran.exists(), "no refused job ran");
    assert!(
        c.logs().contains("was not stored by a trusted master"),
        "one readable log line"
    );

    // rotation: workers trust a and b; the master moves to b and re-signs a's jobs; then a goes
    let (status, _) = c
        .send(
            "PUT",
            &url,
            "/api/v1/jobs/signed",
            Some(ADMIN),
            Some(job("signed", "echo signed")),
        )
        .await;
    assert!(matches!(status, 200 | 201));
    c.stop_worker("w1", Duration::from_secs(20)).await;
    let both = format!("{pub_a},{pub_b}");
    c.start_worker("w2", &["--trusted-keys", &both]);
    c.wait_members(&["w2"]).await;
    // registered is not yet scheduling: w2 has listed the jobs and owns the signed one
    let w2_log = c.path("worker-w2.log");
    poll(Duration::from_secs(20), "w2 owns the signed job", || async {
        std::fs::read_to_string(&w2_log)
            .unwrap_or_default()
            .contains("owned job=\"signed\"")
            .then_some(())
    })
    .await;
    c.kill_master("m1");
    let config = c.path("master-b.toml");
    std::fs::write(&config, format!("[master]\ntrusted_keys = [{pub_a:?}]\n")).unwrap();
    let url = c
        .start_master("m2", &["--signing-key", &key_b, "--config", &s(&config)])
        .await;
    poll(
        Duration::from_secs(10),
        "the job signed by the old key is signed by the new one",
        || async {
            let key = c
                .coord
                .get_job("signed")
                .await
                .ok()
                .flatten()
                .and_then(|j| j.signature)
                .map(|s| s.key);
            (key.as_deref() == Some(id_b.as_str())).then_some(())
        },
    )
    .await;
    let a_signed_planted = c.coord.get_job("planted").await.unwrap().unwrap();
    assert!(
        a_signed_planted.signature.is_none(),
        "an unsigned job is never signed by a re-sign"
    );
    c.stop_worker("w2", Duration::from_secs(20)).await;
    c.start_worker("w3", &["--trusted-keys", &pub_b]);
    poll(
        Duration::from_secs(30),
        "a run on w3, trusting only the new key",
        || async {
            c.api_runs(&url, "signed")
                .await
                .into_iter()
                .find(|r| r.worker == "w3" && serde_json::to_value(r.status).unwrap() == json!("succeeded"))
        },
    )
    .await;
    assert!(!ran.exists());
}

/// A worker given an etcd user waits for etcd before it starts (it must authenticate first);
/// SIGTERM while it waits stops it at once and cleanly, as a stop during start-up should.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waiting_for_etcd_to_authenticate_stops_cleanly_on_sigterm() {
    let c = Cluster::new().await;
    let pw = c.path("worker.pw");
    std::fs::write(&pw, "worker-password").unwrap();
    let log = c.path("waiting-worker.log");
    let logf = std::fs::File::create(&log).unwrap();
    let nobody_listens = format!("http://127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args([
            "worker",
            "--etcd",
            &nobody_listens,
            "--prefix",
            &c.prefix,
            "--id",
            "waiting",
        ])
        .args(["--etcd-user", "worker", "--etcd-password-file", &s(&pw)])
        .arg("--spool-dir")
        .arg(c.path("spool-waiting"))
        .env("CRONMESH_WORKER_TOKEN", WORKER)
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(20), "the worker says it waits for etcd", || {
        read().contains("waiting to authenticate before starting")
    })
    .await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = poll(Duration::from_secs(10), "the worker exits", || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(
        status.success(),
        "a stop during start-up is a clean exit: {status}\n{}",
        read()
    );
    assert!(
        read().contains("shutdown requested before etcd could be reached"),
        "{}",
        read()
    );
}
