//! The receivers the notification specs deliver to work on their own: the webhook sink records
//! requests, checks their signature and goes down and up when told; the SMTP sink (aiosmtpd)
//! keeps the messages of a real SMTP conversation.

use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_sink_records_requests_checks_signatures_and_goes_down_and_up() {
    let mut sink = WebhookSink::start(Some("s3cret")).await;
    let http = cronmesh::http_client::client();
    let body = br#"{"event":"failure","job":"backup"}"#.to_vec();
    let url = sink.url();
    let post = |sig: Option<String>| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("X-Cronmesh-Event", "failure")
            .body(body.clone());
        if let Some(s) = sig {
            req = req.header("X-Cronmesh-Signature", s);
        }
        req.send()
    };
    // HMAC-SHA256 of RFC 4231's test case 2, as the webhook's receivers compute it
    assert_eq!(
        webhook_signature(b"Jefe", b"what do ya want for nothing?"),
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    let good = webhook_signature(b"s3cret", &body);
    assert_eq!(post(Some(good.clone())).await.unwrap().status(), 200);
    assert_eq!(sink.count(), 1);
    let r = &sink.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
    assert_eq!(r.header("X-Cronmesh-Event"), Some("failure"));
    assert_eq!(r.json()["job"], "backup");
    assert_eq!(r.signature_ok, Some(true));

    // a wrong or missing signature is refused and counted apart
    assert_eq!(post(Some("sha256=00".into())).await.unwrap().status(), 401);
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!((sink.count(), sink.bad_signatures(), sink.requests().len()), (1, 2, 3));

    // down: 503, still recorded
    sink.set_down();
    assert_eq!(post(Some(good.clone())).await.unwrap().status(), 503);
    assert_eq!((sink.count(), sink.requests().len()), (1, 4));

    // not listening: the connection is refused, on a fresh client too
    sink.stop_listening().await;
    let e = cronmesh::http_client::client()
        .post(sink.url())
        .body(body.clone())
        .send()
        .await
        .expect_err("nothing listens");
    assert!(e.is_connect(), "{e:?}");
    assert!(
        post(Some(good.clone())).await.is_err(),
        "an open connection is closed too"
    );

    // up again, on the same port
    let port = sink.port;
    sink.set_up().await;
    assert_eq!(sink.port, port);
    assert_eq!(post(Some(good)).await.unwrap().status(), 200);
    assert_eq!(sink.count(), 2);

    // without a secret nothing is checked
    let open = WebhookSink::start(None).await;
    let resp = cronmesh::http_client::client()
        .post(open.url())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(open.requests()[0].signature_ok, None);
    assert_eq!(open.bad_signatures(), 0);
}

/// One SMTP command and the server's (last) reply line.
fn smtp(conn: &mut BufReader<std::net::TcpStream>, line: &str) -> String {
    if !line.is_empty() {
        conn.get_mut().write_all(format!("{line}\r\n").as_bytes()).unwrap();
    }
    loop {
        let mut reply = String::new();
        conn.read_line(&mut reply).unwrap();
        // a multi-line reply goes on while the 4th character is '-'
        if reply.len() < 4 || reply.as_bytes()[3] != b'-' {
            return reply.trim_end().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_sink_keeps_each_message_of_a_real_smtp_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let Some(sink) = SmtpSink::start(dir.path(), "smtp sink spec").await else {
        return;
    };
    let port = sink.port;
    let conversation = move |data: &'static str| {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = BufReader::new(stream);
        assert!(smtp(&mut c, "").starts_with("220"));
        assert!(smtp(&mut c, "EHLO cronmesh.test").starts_with("250"));
        assert!(smtp(&mut c, "MAIL FROM:<cronmesh@example.com>").starts_with("250"));
        assert!(smtp(&mut c, "RCPT TO:<ops@example.com>").starts_with("250"));
        assert!(smtp(&mut c, "RCPT TO:<oncall@example.com>").starts_with("250"));
        assert!(smtp(&mut c, "DATA").starts_with("354"));
        let answer = smtp(&mut c, &format!("{data}\r\n."));
        smtp(&mut c, "QUIT");
        answer
    };
    let msg = "From: cronmesh@example.com\r\nTo: ops@example.com, oncall@example.com\r\nSubject: [cronmesh] backup failure: failed\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbackup failed (exit 3)\r\nlast line";
    let answer = tokio::task::spawn_blocking(move || conversation(msg)).await.unwrap();
    assert!(answer.starts_with("250"), "{answer}\n{}", sink.log());
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["from"], "cronmesh@example.com");
    assert_eq!(
        got[0]["to"],
        serde_json::json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(got[0]["subject"], "[cronmesh] backup failure: failed");
    assert_eq!(got[0]["body"], "backup failed (exit 3)\nlast line\n");

    // told to fail, it refuses with a temporary error and keeps nothing
    sink.set_failing(true);
    let answer = tokio::task::spawn_blocking(move || conversation(msg)).await.unwrap();
    assert!(answer.starts_with("451"), "{answer}");
    sink.set_failing(false);
    assert_eq!(sink.messages().len(), 1);
}
