//! What the run records say about a window of ticks: each tick should have exactly one run.

use cronmesh::model::{RunRecord, RunStatus};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// Every record in the workers' `--runs-file`s (a line that does not parse is skipped: a
/// worker killed mid-write may leave half a line).
pub fn read(paths: &[PathBuf]) -> Vec<RunRecord> {
    paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<RunRecord>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Ticks of one every-`period_ms` job set in `[from, to]`, as the records account for them.
#[derive(Serialize, Default, Clone)]
pub struct TickStats {
    pub expected_ticks: usize,
    /// Ticks that started a process (a duplicate counts once here).
    pub ticks_run: usize,
    /// Ticks whose process started more than once: must be 0.
    pub duplicate_ticks: usize,
    /// Ticks with no record at all: must be 0 (a tick that could not run is recorded).
    pub missed_ticks: usize,
    /// Ticks recorded `skipped` (misfire policy after an outage, or `forbid` overlap).
    pub skipped_ticks: usize,
    /// Ticks recorded `lost` (claimed by a worker that died without reporting).
    pub lost_ticks: usize,
    /// Runs that started a second or more after their planned time (caught up after a failover).
    pub late_runs: usize,
    pub lag_p50_ms: f64,
    pub lag_p90_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Every run's lag, sorted (for the chart; not in the JSON).
    #[serde(skip)]
    pub lags: Vec<f64>,
    /// Planned times of the ticks that were not run on time (skipped, lost, missed or late).
    #[serde(skip)]
    pub troubled: Vec<i64>,
    /// The ticks with no record (job, planned Unix ms), oldest first; the first 100 (what a
    /// failed smoke run prints, to match against the timeline).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<(String, i64)>,
}

pub fn ticks(recs: &[RunRecord], jobs: &[String], period_ms: i64, from: i64, to: i64) -> TickStats {
    let wanted: std::collections::HashSet<&str> = jobs.iter().map(|s| s.as_str()).collect();
    let first = (from + period_ms - 1).div_euclid(period_ms);
    let last = to.div_euclid(period_ms);
    let per_job = (last - first + 1).max(0) as usize;
    let mut by_tick: HashMap<(&str, i64), Vec<&RunRecord>> = HashMap::new();
    for r in recs {
        if r.planned_at >= from && r.planned_at <= to && wanted.contains(r.job.as_str()) {
            by_tick.entry((r.job.as_str(), r.planned_at)).or_default().push(r);
        }
    }
    let mut s = TickStats {
        expected_ticks: jobs.len() * per_job,
        ..Default::default()
    };
    for ((_, planned), rs) in &by_tick {
        let started = rs.iter().filter(|r| r.started_at.is_some()).count();
        if started > 0 {
            s.ticks_run += 1;
        }
        if started > 1 {
            s.duplicate_ticks += 1;
        }
        if started == 0 {
            if rs.iter().any(|r| r.status == RunStatus::Lost) {
                s.lost_ticks += 1;
            } else if rs.iter().any(|r| r.status == RunStatus::Skipped) {
                s.skipped_ticks += 1;
            }
            s.troubled.push(*planned);
        }
        for r in rs {
            if let Some(l) = r.lag_ms {
                s.lags.push(l as f64);
                if l >= 1000 {
                    s.late_runs += 1;
                    s.troubled.push(*planned);
                }
            }
        }
    }
    s.missed_ticks = s.expected_ticks.saturating_sub(by_tick.len());
    for t in first..=last {
        for j in jobs {
            if s.missed.len() < 100 && !by_tick.contains_key(&(j.as_str(), t * period_ms)) {
                s.missed.push((j.clone(), t * period_ms));
            }
        }
    }
    s.lags.sort_by(f64::total_cmp);
    s.lag_p50_ms = pct(&s.lags, 0.5);
    s.lag_p90_ms = pct(&s.lags, 0.9);
    s.lag_p99_ms = pct(&s.lags, 0.99);
    s.lag_max_ms = s.lags.last().copied().unwrap_or(0.0);
    s.troubled.sort();
    s
}

/// The value at quantile `p` of sorted values (nearest rank).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use cronmesh::logstore::conformance::record;

    fn run(job: &str, planned: i64, lag: i64) -> RunRecord {
        let mut r = record(&format!("{job}-{planned}-{lag}"), job, planned, RunStatus::Succeeded);
        r.started_at = Some(planned + lag);
        r.lag_ms = Some(lag);
        r
    }

    #[test]
    fn a_window_accounts_for_duplicates_misses_skips_and_late_runs() {
        let jobs = vec!["a".to_string(), "b".to_string()];
        let mut recs = vec![
            run("a", 1000, 3),
            run("a", 2000, 5),
            run("a", 2000, 7),
            run("b", 1000, 1500),
        ];
        let mut skipped = record("s", "b", 2000, RunStatus::Skipped);
        skipped.started_at = None;
        skipped.lag_ms = None;
        recs.push(skipped);
        recs.push(run("a", 9000, 1)); // outside the window
        recs.push(run("zzz", 1000, 1)); // not one of ours
        // window [500, 3000]: ticks 1000, 2000, 3000 for each job
        let s = ticks(&recs, &jobs, 1000, 500, 3000);
        assert_eq!(s.expected_ticks, 6);
        assert_eq!(s.ticks_run, 3);
        assert_eq!(s.duplicate_ticks, 1);
        assert_eq!(s.skipped_ticks, 1);
        assert_eq!(s.missed_ticks, 2, "a@3000 and b@3000 have no record");
        assert_eq!(s.missed, vec![("a".to_string(), 3000), ("b".to_string(), 3000)]);
        assert_eq!(s.late_runs, 1);
        assert_eq!(s.lag_max_ms, 1500.0);
    }
}
