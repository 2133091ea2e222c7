//! Each job's newest run record, kept in memory for the job views' `last_run`, so a GET of a
//! job or a page of the jobs list costs no run-log probe per job.
//!
//! Filled from the store on a miss and kept current by every record this master ingests and
//! every `run.finished` the other masters relay. Updates only ever move an entry forward in
//! the store's order (`planned_at`, then `run_id`; a `lost` placeholder gives way to the real
//! record of the same run), so a slow store read can never replace a newer record that arrived
//! meanwhile. An entry is trusted for `FRESH` at most: a relayed event this master missed
//! (a broken watch) leaves it stale for that long, not forever.

use crate::model::{RunRecord, RunStatus};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an entry is used before the store is asked again.
pub const FRESH: Duration = Duration::from_secs(60);
/// Entries kept at most; beyond it the map is cleared (and refilled on demand).
const MAX_ENTRIES: usize = 200_000;

#[derive(Default)]
pub struct LastRuns {
    map: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// `None`: the job had no run when the store was asked.
    run: Option<RunRecord>,
    at: Instant,
}

/// Whether `new` comes after `old` in the store's newest-first order.
fn newer(new: &RunRecord, old: &RunRecord) -> bool {
    (new.planned_at, &new.run_id) > (old.planned_at, &old.run_id)
        || (new.run_id == old.run_id && old.status == RunStatus::Lost)
}

impl LastRuns {
    /// Splits `jobs` into what is known (job → its newest record, if any) and what must be
    /// read from the store.
    pub fn get(&self, jobs: &[String]) -> (HashMap<String, RunRecord>, Vec<String>) {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut known = HashMap::new();
        let mut missing = Vec::new();
        for j in jobs {
            match map.get(j) {
                Some(e) if e.at.elapsed() < FRESH => {
                    if let Some(r) = &e.run {
                        known.insert(j.clone(), r.clone());
                    }
                }
                _ => missing.push(j.clone()),
            }
        }
        (known, missing)
    }

    /// What the store said for `asked`: `found` holds the jobs that have runs.
    pub fn filled(&self, asked: &[String], found: &[RunRecord]) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() + asked.len() > MAX_ENTRIES {
            map.clear();
        }
        let now = Instant::now();
        for j in asked {
            let e = map.entry(j.clone()).or_insert(Entry { run: None, at: now });
            e.at = now;
        }
        for r in found {
            Self::merge(&mut map, r, now);
        }
    }

    /// A record that is now in the store (ingested here, or relayed by another master).
    pub fn observe(&self, record: &RunRecord) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // only jobs someone asked about are kept: the others are read when first asked
        if map.contains_key(&record.job) {
            Self::merge(&mut map, record, Instant::now());
        }
    }

    fn merge(map: &mut HashMap<String, Entry>, r: &RunRecord, now: Instant) {
        let e = map.entry(r.job.clone()).or_insert(Entry { run: None, at: now });
        if e.run.as_ref().is_none_or(|old| newer(r, old)) {
            let mut r = r.clone();
            r.output = String::new();
            e.run = Some(r);
        }
    }

    #[cfg(test)]
    fn age(&self, job: &str, by: Duration) {
        let mut map = self.map.lock().unwrap();
        if let Some(e) = map.get_mut(job) {
            e.at -= by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logstore::conformance::record;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entries_only_move_forward_and_a_lost_placeholder_gives_way() {
        let c = LastRuns::default();
        let (known, missing) = c.get(&names(&["a", "b"]));
        assert!(known.is_empty());
        assert_eq!(missing, names(&["a", "b"]));
        // the store knows a@2000 for a, nothing for b
        c.filled(&names(&["a", "b"]), &[record("a2", "a", 2000, RunStatus::Succeeded)]);
        let (known, missing) = c.get(&names(&["a", "b"]));
        assert!(missing.is_empty(), "b is known to have no run");
        assert_eq!(known["a"].run_id, "a2");
        assert!(known["a"].output.is_empty(), "outputs are not kept");
        // an older record arriving late does not win; a newer one does
        c.observe(&record("a1", "a", 1000, RunStatus::Failed));
        assert_eq!(c.get(&names(&["a"])).0["a"].run_id, "a2");
        c.observe(&record("a3", "a", 3000, RunStatus::Failed));
        assert_eq!(c.get(&names(&["a"])).0["a"].run_id, "a3");
        // same planned time: the larger run id is the newer (the store's order)
        c.observe(&record("a4", "a", 3000, RunStatus::Succeeded));
        assert_eq!(c.get(&names(&["a"])).0["a"].run_id, "a4");
        // a slow store read that returns an older record does not replace the newer one
        c.filled(&names(&["a"]), &[record("a2", "a", 2000, RunStatus::Succeeded)]);
        assert_eq!(c.get(&names(&["a"])).0["a"].run_id, "a4");
        // b's first run arrives
        c.observe(&record("b1", "b", 5000, RunStatus::Lost));
        assert_eq!(c.get(&names(&["b"])).0["b"].status, RunStatus::Lost);
        c.observe(&record("b1", "b", 5000, RunStatus::Succeeded));
        assert_eq!(
            c.get(&names(&["b"])).0["b"].status,
            RunStatus::Succeeded,
            "the real record replaces the placeholder"
        );
        // a job nobody asked about is not kept
        c.observe(&record("z1", "z", 1000, RunStatus::Succeeded));
        assert_eq!(c.get(&names(&["z"])).1, names(&["z"]));
        // an entry older than FRESH is read again
        c.age("a", FRESH);
        assert_eq!(c.get(&names(&["a"])).1, names(&["a"]));
    }
}
