//! Short runs of the scenarios that start clusters, to keep the harness working in CI. Their
//! figures are printed, not held to timing thresholds (timing belongs to the full runs in
//! RESULTS.md); they fail if the harness breaks, a tick runs twice, or a tick has no record.
//! Reports go to `target/test-output/loadtest/<scenario>/`.

use std::path::PathBuf;

fn run(scenario: &str, args: &[&str]) -> serde_json::Value {
    let (dir, report) = run_report(scenario, args);
    let svg = std::fs::read_to_string(dir.join("lag.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("p99"),
        "the lag chart has its legend"
    );
    report
}

/// `run` for a scenario without a lag chart (nothing is scheduled by a worker process): the
/// report directory and `report.json`.
fn run_report(scenario: &str, args: &[&str]) -> (PathBuf, serde_json::Value) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-output/loadtest")
        .join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh-loadtest"))
        .arg(scenario)
        .args(args)
        .arg("--report-dir")
        .arg(&dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the load test");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["report.md", "report.json"] {
        assert!(dir.join(f).exists(), "{f} written");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert!(report["limits"]["spawn_per_s_sequential"].as_f64().unwrap() > 0.0);
    assert!(report["limits"]["etcd_cas_p50_ms"].as_f64().unwrap() > 0.0);
    (dir, report)
}

fn assert_every_tick_once(t: &serde_json::Value) {
    assert!(t["ticks_run"].as_u64().unwrap() > 0, "runs happened");
    assert_eq!(t["duplicate_ticks"], 0, "no tick ran twice");
    assert_eq!(
        t["missed_ticks"], 0,
        "every tick has a record; without one (job, planned ms): {}",
        t["missed"]
    );
}

#[test]
fn steady_smoke_runs_and_reports() {
    let r = run("steady", &["--jobs", "20", "--workers", "2", "--seconds", "3"]);
    let s = &r["steady"];
    assert_every_tick_once(s);
    // the user's view: every started run's command stamped its own clock, none before its tick
    let c = &s["command_lag"];
    assert_eq!(c["n"], s["ticks_run"], "{c}");
    assert_eq!(c["unstamped"], 0, "{c}");
    assert_eq!(c["early_starts"], 0, "no command starts before its planned time: {c}");
    assert_eq!(s["floor"]["simultaneous"], 20);
    assert_eq!(s["floor"]["n"], 100, "20 raw starts × 5 bursts: {}", s["floor"]);
}

#[test]
fn churn_smoke_kills_a_worker_and_stops_the_etcd_leader_and_no_tick_runs_twice() {
    let r = run(
        "churn",
        &[
            "--jobs",
            "20",
            "--workers",
            "2",
            "--seconds",
            "12",
            "--kill-every",
            "6",
            "--lease-ttl",
            "3",
        ],
    );
    let c = &r["churn"];
    assert_every_tick_once(c);
    assert_eq!(c["worker_kills"], 1);
    assert_eq!(c["etcd_member_stops"], 1);
}

#[test]
fn scale_smoke_defines_jobs_in_bulk_and_measures_start_up() {
    let r = run(
        "scale",
        &[
            "--jobs",
            "3000",
            "--every-second",
            "10",
            "--workers",
            "1",
            "--seconds",
            "3",
            "--no-ledger-wait",
        ],
    );
    let s = &r["scale"];
    assert_every_tick_once(s);
    assert!(s["startup_to_first_tick_ms"].as_f64().unwrap() > 0.0);
    assert!(s["etcd_db_mb"].as_f64().unwrap() > 0.0);
}

#[test]
fn etcd_limit_smoke_claims_every_tick_exactly_once() {
    // one small step per policy: 2 simulated workers, 1 s, 40 runs/s
    let (_, r) = run_report(
        "etcd-limit",
        &["--workers", "2", "--seconds", "1", "--rates", "40", "--verify", "1000"],
    );
    let e = &r["etcd_limit"];
    let steps = e["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "one step each for allow and forbid: {e}");
    for s in steps {
        assert!(s["runs"].as_u64().unwrap() > 0, "runs happened: {s}");
        assert_eq!(s["claims_lost"], 0, "every claim is a new key: {s}");
        assert_eq!(s["marks_refused"], 0, "{s}");
        // every won tick was claimed again by a rival, and each was held by its claimer
        assert!(s["verified"].as_u64().unwrap() > 0, "{s}");
        assert_eq!(s["verified"], s["claims_won"], "every won tick was checked: {s}");
        assert!(s["claims_won"].as_u64().unwrap() >= s["runs"].as_u64().unwrap(), "{s}");
        assert_eq!(s["duplicates"], 0, "no tick claimed twice: {s}");
        // etcd's own counters saw the writes (a claim per run at least)
        assert!(s["keys_written_per_run"].as_f64().unwrap() >= 0.9, "{s}");
    }
    assert_eq!(e["duplicates"], 0);
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// (ca, cert, key).
fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let files = (dir.join("ca.pem"), dir.join("master.pem"), dir.join("master-key.pem"));
    std::fs::write(&files.0, ca_cert.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    files
}

#[test]
fn api_smoke_over_https_verifies_the_masters_certificate_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
    let report_dir = dir.path().join("report");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh-loadtest"))
        .args(["api", "--seconds", "2", "--clients", "2"])
        .args(["--tls-cert-file", cert, "--tls-key-file", key, "--ca", ca])
        .arg("--report-dir")
        .arg(&report_dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the load test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap()).unwrap();
    // every request went through (over https: a client trusting only the CA)
    fn errors(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    if k == "errors" {
                        v.as_u64().unwrap_or(1)
                    } else {
                        errors(v)
                    }
                })
                .sum(),
            serde_json::Value::Array(a) => a.iter().map(errors).sum(),
            _ => 0,
        }
    }
    assert!(report["api"].is_object(), "{report}");
    assert_eq!(errors(&report["api"]), 0, "{}", report["api"]);
}

#[test]
fn feed_smoke_publishes_the_rate_asked_and_every_subscriber_gets_every_event() {
    let r = run("feed", &["--subscribers", "20", "--rate", "100", "--seconds", "2"]);
    let f = &r["feed"];
    assert_eq!(f["asked"], 200, "{f}");
    assert_eq!(f["published"], f["asked"], "the rate asked is published: {f}");
    assert_eq!(f["missed"], 0, "{f}");
    assert_eq!(
        f["delivered"].as_u64().unwrap(),
        20 * 200,
        "each of the 20 subscribers got each event: {f}"
    );
    assert!(f["master_cpu_us_per_delivery"].as_f64().unwrap() > 0.0, "{f}");
}
