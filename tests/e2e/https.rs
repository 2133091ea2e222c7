//! HTTPS for the master (`master.tls_cert_file` / `tls_key_file`), clients that verify it
//! against a CA file (`--master-ca`, `ctl --ca`), and SIGHUP, which reloads the certificate and
//! the config file's tokens without a restart and without dropping open connections. Real
//! certificates (rcgen, `certs.rs`), a real master process, real TLS.

use crate::certs::{Ca, CertFiles};
use crate::harness::*;
use cronmesh::http_client::{Trust, connect_websocket};
use cronmesh::model::JobSpec;
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const OLD: &str = "old-token-for-https-0001";
const NEW: &str = "new-token-for-https-0001";

/// An HTTP client that trusts only `ca`, and keeps no idle connection (each request makes a
/// new handshake, so it sees the certificate served now).
fn client_trusting(ca: &Path) -> reqwest::Client {
    Trust::from_ca_file(Some(ca))
        .unwrap()
        .apply(cronmesh::http_client::builder().pool_max_idle_per_host(0))
        .build()
        .unwrap()
}

/// Writes the master's config file: HTTPS with `cert`, a long keep-alive (a spec's kept-alive
/// connection must not time out while it waits), and `tokens` (name, role, token) in
/// `[master.auth]`.
fn write_config(path: &Path, cert: &CertFiles, tokens: &[(&str, &str, &str)]) {
    let mut text = format!(
        "[master]\ntls_cert_file = {:?}\ntls_key_file = {:?}\nheader_read_timeout = \"2m\"\n",
        cert.cert, cert.key
    );
    for (name, role, token) in tokens {
        text.push_str(&format!(
            "\n[[master.auth.tokens]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken = \"{token}\"\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

async fn status(client: &reqwest::Client, url: &str, token: &str) -> Result<u16, String> {
    client
        .get(format!("{url}/api/v1/jobs"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

async fn metric(client: &reqwest::Client, url: &str, series: &str) -> f64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One TLS connection kept open, on which requests are sent one after the other.
struct KeptAlive(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl KeptAlive {
    async fn open(url: &str, ca: &Path) -> KeptAlive {
        let config = Trust::from_ca_file(Some(ca)).unwrap().rustls_config().unwrap();
        let addr = url.trim_start_matches("https://");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        KeptAlive(
            tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap(),
        )
    }

    /// GET `path` with `token` on this connection; the answer's status.
    async fn get(&mut self, path: &str, token: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n");
        self.0.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            let n = self
                .0
                .read(&mut chunk)
                .await
                .expect("the kept-alive connection is open");
            assert!(n > 0, "the master closed the kept-alive connection");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length");
        while buf.len() < head_end + len {
            let n = self.0.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the master closed the kept-alive connection mid-answer");
            buf.extend_from_slice(&chunk[..n]);
        }
        head[9..12].parse().unwrap()
    }
}

/// `cronmesh ctl ARGS`: exit code, stdout, stderr.
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .arg("ctl")
        .args(args)
        .env_remove("CRONMESH_TOKEN")
        .env_remove("CRONMESH_URL")
        .env_remove("CRONMESH_CA")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_worker_with_the_ca_reports_runs_and_ctl_needs_the_ca_to_trust_the_master() {
    let mut c = Cluster::new().await;
    let ca = Ca::new(&c.path("certs"), "test");
    let cert = ca.server("master");
    let http = client_trusting(&ca.cert);
    let m = c
        .start_https_master(
            "m1",
            &[
                "--tls-cert-file",
                cert.cert.to_str().unwrap(),
                "--tls-key-file",
                cert.key.to_str().unwrap(),
            ],
            &http,
        )
        .await;
    assert!(m.starts_with("https://"), "{m}");
    // registered for workers with its https:// URL (the default advertise URL)
    let masters = c.coord.list_master_urls().await.unwrap();
    assert_eq!(masters, vec![m.clone()]);

    // w1 trusts the CA: its runs arrive; w2 does not: it says which setting is missing
    c.start_worker("w1", &["--labels", "zone=a", "--master-ca", ca.cert.to_str().unwrap()]);
    c.start_worker("w2", &["--labels", "zone=b"]);
    c.wait_members(&["w1", "w2"]).await;
    let mut a = JobSpec::new("tls-a", "@every 1s", "true");
    a.selector.insert("zone".into(), "a".into());
    c.put_job(a).await;
    let mut b = JobSpec::new("tls-b", "@every 1s", "true");
    b.selector.insert("zone".into(), "b".into());
    c.put_job(b).await;
    wait_for(Duration::from_secs(30), "w1's runs arrive over https", || async {
        let resp = http
            .get(format!("{m}/api/v1/runs?job=tls-a"))
            .bearer_auth(READ)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        body["runs"].as_array().is_some_and(|r| !r.is_empty())
    })
    .await;
    let w2_log = c.path("worker-w2.log");
    wait_until(Duration::from_secs(30), "w2 says the master is not trusted", || {
        std::fs::read_to_string(&w2_log).unwrap_or_default().contains(
            "the master's certificate is not trusted (invalid peer certificate: UnknownIssuer); set worker.master_ca_file (--master-ca)",
        )
    })
    .await;

    // ctl with --ca works, over https and over wss (the feed)
    let ca_file = ca.cert.to_str().unwrap();
    let (code, out, err) = ctl(&["jobs", "list", "--url", &m, "--token", READ, "--ca", ca_file]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("tls-a"), "{out}");
    // without: a clear error naming the flag, exit 3
    let (code, out, err) = ctl(&["jobs", "list", "--url", &m, "--token", READ]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains(
            "error: the master's certificate is not trusted: invalid peer certificate: UnknownIssuer; pass --ca"
        ),
        "{err}"
    );
    let (code, _, err) = ctl(&["events", "--url", &m, "--token", READ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("the master's certificate is not trusted"), "{err}");
    // a --ca that is not there is a usage error that names it
    let (code, _, err) = ctl(&[
        "jobs",
        "list",
        "--url",
        &m,
        "--token",
        READ,
        "--ca",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--ca: cannot read /nonexistent/ca.pem: no such file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_puts_new_tokens_in_force_and_removes_old_ones_without_dropping_open_connections() {
    let mut c = Cluster::new().await;
    let ca = Ca::new(&c.path("certs"), "test");
    let cert = ca.server("master");
    let cfg = c.path("master.toml");
    write_config(&cfg, &cert, &[("old", "read", OLD)]);
    let http = client_trusting(&ca.cert);
    let m = c
        .start_https_master("m1", &["--config", cfg.to_str().unwrap()], &http)
        .await;
    assert_eq!(status(&http, &m, OLD).await, Ok(200));
    assert_eq!(status(&http, &m, NEW).await, Ok(401));

    // a feed over wss, and a kept-alive HTTP connection, both open across the reload
    let url = format!("{}/api/v1/events?topics=jobs", m.replacen("https", "wss", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {READ}").parse().unwrap());
    let trust = Trust::from_ca_file(Some(&ca.cert)).unwrap();
    let (mut ws, _) = connect_websocket(req, &trust).await.expect("the feed opens over wss");
    let mut kept = KeptAlive::open(&m, &ca.cert).await;
    assert_eq!(kept.get("/api/v1/jobs", READ).await, 200);

    write_config(&cfg, &cert, &[("new", "read", NEW)]);
    c.signal_master("m1", libc::SIGHUP);
    wait_for(Duration::from_secs(10), "the new token works", || async {
        status(&http, &m, NEW).await == Ok(200)
    })
    .await;
    assert_eq!(status(&http, &m, OLD).await, Ok(401), "the removed token is refused");
    // tokens from the environment are kept as they were read at start
    assert_eq!(status(&http, &m, ADMIN).await, Ok(200));
    assert_eq!(
        metric(&http, &m, "cronmesh_config_reloads_total{outcome=\"ok\"}").await,
        1.0
    );
    assert!(c.master_log("m1").contains("configuration reloaded (SIGHUP)"));

    // the kept-alive connection answers, with the new set of tokens
    assert_eq!(kept.get("/api/v1/jobs", NEW).await, 200);
    assert_eq!(kept.get("/api/v1/jobs", OLD).await, 401);
    // the feed is still open: it answers a ping and carries a job change made now
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    c.put_job(JobSpec::new("after-reload", "@hourly", "true")).await;
    let mut seen = Vec::new();
    let (mut pong, mut saved) = (false, false);
    while !(pong && saved) {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("the feed went quiet; saw {seen:?}"))
            .expect("the feed is still open")
            .expect("the feed is still open");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            pong |= v["type"] == "pong";
            saved |= v["type"] == "job.saved" && v["job"]["name"] == "after-reload";
            seen.push(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_serves_new_certificate_files_and_keeps_the_old_certificate_when_the_new_files_are_broken() {
    let mut c = Cluster::new().await;
    let old_ca = Ca::new(&c.path("certs-old"), "old");
    let new_ca = Ca::new(&c.path("certs-new"), "new");
    // the files the master is configured with: the old CA's certificate, for now
    let served = CertFiles {
        cert: c.path("master.pem"),
        key: c.path("master-key.pem"),
    };
    let install = |from: &CertFiles| {
        std::fs::copy(&from.cert, &served.cert).unwrap();
        std::fs::copy(&from.key, &served.key).unwrap();
    };
    install(&old_ca.server("master"));
    let cfg = c.path("master.toml");
    write_config(&cfg, &served, &[]);
    let trusts_old = client_trusting(&old_ca.cert);
    let trusts_new = client_trusting(&new_ca.cert);
    let m = c
        .start_https_master("m1", &["--config", cfg.to_str().unwrap()], &trusts_old)
        .await;
    let refused = status(&trusts_new, &m, READ).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    install(&new_ca.server("master"));
    c.signal_master("m1", libc::SIGHUP);
    wait_for(
        Duration::from_secs(10),
        "a client trusting only the new CA connects",
        || async { status(&trusts_new, &m, READ).await == Ok(200) },
    )
    .await;
    // (a fresh client: one that connected before may resume its TLS session, as with any server)
    let refused = status(&client_trusting(&old_ca.cert), &m, READ).await.unwrap_err();
    assert!(
        refused.contains("UnknownIssuer"),
        "the old certificate is no longer served: {refused}"
    );

    // a broken file: the reload fails, is counted and logged, and the new certificate stays
    std::fs::write(&served.cert, "not a certificate\n").unwrap();
    c.signal_master("m1", libc::SIGHUP);
    wait_for(Duration::from_secs(10), "the failed reload is counted", || async {
        metric(&trusts_new, &m, "cronmesh_config_reloads_total{outcome=\"failed\"}").await == 1.0
    })
    .await;
    assert_eq!(metric(&trusts_new, &m, "cronmesh_config_reload_failing").await, 1.0);
    assert_eq!(status(&trusts_new, &m, READ).await, Ok(200));
    let log = c.master_log("m1");
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration reload (SIGHUP) failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(
        failed[0].contains("master.tls_cert_file") && failed[0].contains("holds no PEM certificate"),
        "{}",
        failed[0]
    );
}

/// `cronmesh ROLE ARGS` against an etcd nobody listens on: how it exited and what it said.
fn start_failing(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cronmesh"))
        .args(args)
        .env("CRONMESH_ADMIN_TOKEN", ADMIN)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_tls_settings_stop_the_master_before_it_binds_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "test");
    let cert = ca.server("master");
    let other = ca.server("other");
    let garbage: PathBuf = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let port = cronmesh::etcd_process::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let master = |extra: &[&str]| {
        let mut args = vec!["master", "--etcd", "http://127.0.0.1:1", "--listen", &listen];
        args.extend_from_slice(extra);
        start_failing(&args)
    };
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert-file".into(), p(&cert.cert)],
            "invalid config: master.tls_key_file: is not set, but master.tls_cert_file is",
        ),
        (
            vec!["--tls-key-file".into(), p(&cert.key)],
            "invalid config: master.tls_cert_file: is not set, but master.tls_key_file is",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                "/nonexistent/master.pem".into(),
                "--tls-key-file".into(),
                p(&cert.key),
            ],
            "invalid config: master.tls_cert_file: cannot read /nonexistent/master.pem: no such file",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                p(&garbage),
                "--tls-key-file".into(),
                p(&cert.key),
            ],
            "invalid config: master.tls_cert_file:",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                p(&cert.cert),
                "--tls-key-file".into(),
                p(&garbage),
            ],
            "invalid config: master.tls_key_file:",
        ),
        (
            vec![
                "--tls-cert-file".into(),
                p(&cert.cert),
                "--tls-key-file".into(),
                p(&other.key),
            ],
            "is not the key of the certificate in master.tls_cert_file",
        ),
    ];
    for (extra, want) in cases {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ok, err) = master(&extra);
        assert!(!ok, "{extra:?} started");
        assert!(err.contains(want), "{extra:?}: {err}");
        // it stopped before binding (and before connecting to etcd)
        assert!(
            !err.contains("cannot listen") && !err.contains("etcd at"),
            "{extra:?}: {err}"
        );
        assert!(std::net::TcpListener::bind(&listen).is_ok(), "{listen} is free");
    }
    // a worker's CA file is checked at start too
    let (ok, err) = start_failing(&[
        "worker",
        "--etcd",
        "http://127.0.0.1:1",
        "--master-ca",
        "/nonexistent/ca.pem",
    ]);
    assert!(!ok);
    assert!(
        err.contains("invalid config: worker.master_ca_file: cannot read /nonexistent/ca.pem: no such file"),
        "{err}"
    );
}
