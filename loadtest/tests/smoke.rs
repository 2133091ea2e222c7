//! A few seconds of `steady`, to keep the harness working in CI. Its figures are printed, not
//! held to thresholds (timing belongs to the full runs in RESULTS.md); it fails only if the
//! harness breaks or a tick runs twice.

#[test]
fn steady_smoke_runs_and_reports() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cronmesh-loadtest"))
        .args(["steady", "--jobs", "20", "--workers", "2", "--seconds", "3"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run the load test");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = text
        .split("```json")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("a JSON report");
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(report["steady"]["duplicate_ticks"], 0);
    assert!(report["steady"]["runs"].as_u64().unwrap() > 0);
    assert!(report["limits"]["spawn_per_s_sequential"].as_f64().unwrap() > 0.0);
}
