//! The invariants `docs/ARCHITECTURE.md` states about the code's shape, checked on the source
//! (the way rust-analyzer's `tidy` does): a rule broken here is a design decision undone by
//! accident. Each rule says what it protects; change the document and this test together.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `src/...` path (with `/`) and the text without comment lines.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    rust_files(&root.join("src"))
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            (rel, code)
        })
        .collect()
}

/// Files outside `allowed` (path prefixes) whose code contains `needle`.
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|(p, code)| !allowed.iter().any(|a| p.starts_with(a)) && code.contains(needle))
        .map(|(p, _)| p)
        .collect()
}

#[test]
fn only_coord_talks_to_etcd() {
    let bad = offenders("etcd_client", &["src/coord/"]);
    assert!(bad.is_empty(), "etcd_client used outside src/coord/: {bad:?}");
}

#[test]
fn outgoing_http_clients_are_built_by_http_client_only() {
    // a client built elsewhere would panic on its first build without a TLS provider
    for needle in [
        "reqwest::Client::new(",
        "reqwest::Client::builder(",
        "reqwest::ClientBuilder::new(",
    ] {
        let bad = offenders(needle, &["src/http_client.rs"]);
        assert!(
            bad.is_empty(),
            "{needle} outside src/http_client.rs: {bad:?}; use cronmesh::http_client::builder()"
        );
    }
}

#[test]
fn only_logstore_talks_to_databases() {
    for db in ["rusqlite", "mongodb::"] {
        let bad = offenders(db, &["src/logstore/"]);
        assert!(bad.is_empty(), "{db} used outside src/logstore/: {bad:?}");
    }
}

#[test]
fn metric_names_live_in_telemetry_metrics_only() {
    // a metric name written anywhere else drifts from docs/METRICS.md and the dashboards
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(p, code)| {
            p != "src/telemetry/metrics.rs" && code.contains("\"cronmesh_") && !p.ends_with("conformance.rs")
        })
        .map(|(p, _)| p)
        .collect();
    assert!(bad.is_empty(), "metric names outside src/telemetry/metrics.rs: {bad:?}");
    let raw = offenders("IntCounter::new", &["src/telemetry/metrics.rs"]);
    assert!(raw.is_empty(), "metrics registered outside telemetry::metrics: {raw:?}");
}

#[test]
fn the_master_imports_nothing_from_the_worker() {
    // the report seam and ownership live in `cluster`, which both roles use
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(p, code)| {
            p.starts_with("src/master/") && (code.contains("crate::worker") || code.contains("worker::"))
        })
        .map(|(p, _)| p)
        .collect();
    assert!(bad.is_empty(), "master imports worker code: {bad:?}");
}

#[test]
fn cluster_and_model_depend_on_no_role() {
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(p, code)| {
            (p.starts_with("src/cluster/") || p == "src/model.rs")
                && ["crate::worker", "crate::master", "crate::coord", "tokio::"]
                    .iter()
                    .any(|n| code.contains(n))
        })
        .map(|(p, _)| p)
        .collect();
    assert!(bad.is_empty(), "neutral modules import a role or I/O: {bad:?}");
}

#[test]
fn the_scheduler_core_reads_no_clock_and_does_no_io() {
    // decisions in the core, I/O at the edge: the core is driven by a manual clock in its specs
    let core_files = [
        "src/worker/scheduler/core/mod.rs",
        "src/worker/scheduler/core/capacity.rs",
        "src/worker/scheduler/core/claiming.rs",
        "src/worker/scheduler/core/running.rs",
        "src/worker/scheduler/core/drain.rs",
        "src/worker/scheduler/core/buffering.rs",
        "src/worker/scheduler/core/catchup.rs",
        "src/worker/scheduler/tick.rs",
        "src/worker/scheduler/io.rs",
        "src/master/ledger/core.rs",
        "src/master/notify/core.rs",
        "src/master/backfill/core.rs",
        "src/master/deps/core.rs",
    ];
    let forbidden = [
        "now_ms(",
        "Utc::now",
        "Instant::now",
        "SystemTime",
        "tokio::",
        "std::fs",
        "std::process",
        "std::net",
        "std::thread",
        "Coord",
        "reqwest",
        ".await",
    ];
    let present: Vec<String> = sources().into_iter().map(|(p, _)| p).collect();
    for f in core_files {
        assert!(
            present.iter().any(|p| p == f),
            "{f} is gone: update this list with the core's files"
        );
    }
    for (p, code) in sources().into_iter().filter(|(p, _)| core_files.contains(&p.as_str())) {
        let code = code.split("mod tests {").next().unwrap();
        for f in forbidden {
            // `Coord` as a word: `CoordError` or `coord::` paths to types are fine
            let hit = if f == "Coord" {
                code.match_indices("Coord").any(|(i, _)| {
                    let next = code[i + 5..].chars().next().unwrap_or(' ');
                    !next.is_alphanumeric() && next != '_'
                })
            } else {
                code.contains(f)
            };
            assert!(!hit, "{p} uses {f:?}: the core must stay free of clocks and I/O");
        }
    }
}

#[test]
fn etcd_keys_are_built_by_coord_keys_only() {
    // every key of the layout table comes from `Keys`; a hand-built key drifts from it
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(p, code)| {
            p.starts_with("src/coord/")
                && p != "src/coord/mod.rs"
                && (code.contains("keys.prefix()") || code.contains("keys().prefix()"))
                && code.contains("format!(\"{}")
        })
        .map(|(p, _)| p)
        .collect();
    assert!(bad.is_empty(), "keys built outside coord::Keys: {bad:?}");
    for prefix in [
        "\"jobs/\"",
        "\"workers/\"",
        "\"signals/\"",
        "\"feed/\"",
        "\"claims/\"",
        "\"running/\"",
    ] {
        let bad = offenders(prefix, &["src/coord/mod.rs"]);
        assert!(
            bad.is_empty(),
            "key prefix {prefix} written outside coord::Keys: {bad:?}"
        );
    }
}

#[test]
fn anyhow_stays_in_the_binary() {
    let bad = offenders("anyhow", &["src/main.rs"]);
    assert!(
        bad.is_empty(),
        "anyhow outside src/main.rs (use a thiserror enum per layer): {bad:?}"
    );
}

#[test]
fn etcd_failures_in_retrying_loops_are_not_warned_at_every_retry() {
    // an etcd outage is two lines per process (coord::outage): the loops that retry etcd log
    // their failures with `warn_unless_etcd_down!`, so nothing repeats while etcd is down
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(p, _)| ["src/coord/", "src/master/ledger/"].iter().any(|d| p.starts_with(d)))
        .flat_map(|(p, code)| {
            code.lines()
                .filter(|l| l.contains("warn!(") && l.contains("error = %e"))
                .map(|l| format!("{p}: {}", l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(bad.is_empty(), "use warn_unless_etcd_down! for these: {bad:#?}");
    // and etcd's transport is coord's business too
    let tonic = offenders("tonic::", &["src/coord/"]);
    assert!(tonic.is_empty(), "tonic used outside src/coord/: {tonic:?}");
}
