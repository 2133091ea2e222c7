//! `store`: run-log insert throughput by batch size (SQLite in a temp dir, or a given URI).

use crate::records::pct;
use crate::report::Report;
use anyhow::Result;
use cronmesh::model::{RunRecord, RunStatus};
use serde::Serialize;
use std::time::Instant;

#[derive(Serialize)]
pub struct StoreRow {
    pub batch: usize,
    pub records_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub async fn run(uri: &str, records: usize) -> Result<Vec<StoreRow>> {
    let store = cronmesh::logstore::open(uri, Default::default()).await?;
    let mut rows = Vec::new();
    let mut next = 0usize;
    for batch in [1usize, 10, 100, 500] {
        let n = if batch == 1 { records / 10 } else { records };
        let mut lat = Vec::new();
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            let recs: Vec<RunRecord> = (0..batch)
                .map(|i| {
                    cronmesh::logstore::conformance::record(
                        &format!("lt{:012}", next + i),
                        &format!("job{}", (next + i) % 100),
                        1_000_000 + (next + i) as i64,
                        RunStatus::Succeeded,
                    )
                })
                .collect();
            next += batch;
            let t = Instant::now();
            store.insert(&recs).await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            done += batch;
        }
        let el = start.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        rows.push(StoreRow {
            batch,
            records_per_s: done as f64 / el,
            p50_ms: pct(&lat, 0.5),
            p99_ms: pct(&lat, 0.99),
        });
    }
    Ok(rows)
}

pub fn report(r: &mut Report, uri: &str, rows: &[StoreRow]) {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|x| {
            vec![
                x.batch.to_string(),
                format!("{:.0}", x.records_per_s),
                format!("{:.2}", x.p50_ms),
                format!("{:.2}", x.p99_ms),
            ]
        })
        .collect();
    r.table(
        &format!("store: {uri}"),
        &["batch size", "records/s", "p50 batch ms", "p99 batch ms"],
        &table,
    );
    r.json("store", rows);
}
