//! Who schedules which job. Both roles use it: workers to decide what to schedule, masters to
//! show each worker's share (`/api/v1/workers`).
//!
//! `owner` dispatch: rendezvous (highest-random-weight) hashing over the live, non-draining
//! workers whose labels match the job's selector, preferring workers with a free run slot.
//! Every worker computes the same answer from the same membership, without talking to the
//! others; when a worker joins, leaves or fills up, only the jobs it gains or loses move. The hash
//! is fixed (FNV-1a + a 64-bit finaliser) so that every build agrees.
//!
//! `race` dispatch: every eligible worker schedules every job and the tick claims decide (the
//! seed's way, kept for comparison).
//!
//! Neither decides who *runs* a tick: that is the claim's compare-and-create. Ownership only
//! decides who tries, so a moment of disagreement costs a lost claim, never a second run.

use crate::model::{Dispatch, WorkerInfo};
use std::collections::BTreeMap;

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
    x ^ (x >> 33)
}

/// The weight of `worker` for `job`.
pub fn score(worker: &str, job: &str) -> u64 {
    let h = fnv1a(worker.as_bytes(), 0xcbf29ce484222325);
    mix(fnv1a(job.as_bytes(), fnv1a(&[0xff], h)))
}

/// Whether `member` may take ticks of a job with `selector` at all: alive (it is a member),
/// not draining, and carrying every label the selector names.
pub fn eligible(member: &WorkerInfo, selector: &BTreeMap<String, String>) -> bool {
    !member.draining && member.matches(selector)
}

/// The owner of `job` among `members`: the highest rendezvous score among the eligible workers,
/// preferring, in this order, those whose clock is right and that have a free run slot, those
/// whose clock is right, those with a free slot, and then any. So a worker at capacity keeps a
/// job only when every eligible worker is full (it waits for a slot, and records the tick
/// `skipped` for capacity only if none comes before the tick's starting deadline), and a worker
/// whose clock is off keeps one only when every eligible worker's clock is (better a tick run by
/// a wrong clock than none: the alert says so). `None` when no worker is eligible.
pub fn owner<'a>(
    members: &'a BTreeMap<String, WorkerInfo>,
    job: &str,
    selector: &BTreeMap<String, String>,
) -> Option<&'a str> {
    let best = |right_clock: bool, with_room: bool| {
        members
            .values()
            .filter(|m| eligible(m, selector) && (!right_clock || !m.clock_skewed) && (!with_room || !m.at_capacity))
            .max_by_key(|m| (score(&m.id, job), m.id.as_str()))
            .map(|m| m.id.as_str())
    };
    best(true, true)
        .or_else(|| best(true, false))
        .or_else(|| best(false, true))
        .or_else(|| best(false, false))
}

/// Whether worker `id` schedules `job` (claims its ticks): in `race` dispatch every eligible
/// worker does; in `owner` dispatch only the owner.
pub fn schedules(
    members: &BTreeMap<String, WorkerInfo>,
    id: &str,
    dispatch: Dispatch,
    job: &str,
    selector: &BTreeMap<String, String>,
) -> bool {
    match dispatch {
        // a racer whose clock is off stays out while a racer with a right clock may run the job
        Dispatch::Race => members.get(id).is_some_and(|me| {
            eligible(me, selector)
                && (!me.clock_skewed
                    || !members
                        .values()
                        .any(|m| m.dispatch == Dispatch::Race && !m.clock_skewed && eligible(m, selector)))
        }),
        Dispatch::Owner => owner(members, job, selector) == Some(id),
    }
}

/// How many of `jobs` (name, selector) each member schedules, by each member's own dispatch
/// mode (a `race` worker schedules every job it is eligible for).
pub fn scheduled_counts<'a, 'j>(
    members: &'a BTreeMap<String, WorkerInfo>,
    jobs: impl IntoIterator<Item = (&'j str, &'j BTreeMap<String, String>)>,
) -> BTreeMap<&'a str, usize> {
    let mut counts: BTreeMap<&str, usize> = members.keys().map(|k| (k.as_str(), 0)).collect();
    let racers: Vec<&WorkerInfo> = members.values().filter(|m| m.dispatch == Dispatch::Race).collect();
    for (name, selector) in jobs {
        if let Some(o) = owner(members, name, selector)
            && members.get(o).is_some_and(|m| m.dispatch == Dispatch::Owner)
        {
            *counts.entry(o).or_default() += 1;
        }
        for r in racers.iter().filter(|r| eligible(r, selector)) {
            *counts.entry(r.id.as_str()).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, labels: &[(&str, &str)]) -> (String, WorkerInfo) {
        (
            id.to_string(),
            WorkerInfo {
                id: id.into(),
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                hostname: "h".into(),
                pid: 1,
                started_at: 0,
                draining: false,
                at_capacity: false,
                clock_skewed: false,
                clock_offset_ms: None,
                dispatch: Dispatch::Owner,
                listen: None,
                version: "t".into(),
            },
        )
    }

    #[test]
    fn jobs_spread_evenly_and_move_minimally() {
        let three: BTreeMap<_, _> = ["w1", "w2", "w3"].iter().map(|id| member(id, &[])).collect();
        let mut counts = BTreeMap::new();
        let jobs: Vec<String> = (0..3000).map(|i| format!("job-{i}")).collect();
        for j in &jobs {
            *counts.entry(owner(&three, j, &BTreeMap::new()).unwrap()).or_insert(0) += 1;
        }
        for c in counts.values() {
            assert!((800..1200).contains(c), "{counts:?}");
        }
        // w3 leaves: only w3's jobs move
        let two: BTreeMap<_, _> = ["w1", "w2"].iter().map(|id| member(id, &[])).collect();
        for j in &jobs {
            let before = owner(&three, j, &BTreeMap::new()).unwrap();
            let after = owner(&two, j, &BTreeMap::new()).unwrap();
            if before != "w3" {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn selector_and_draining_limit_the_candidates() {
        let mut m: BTreeMap<_, _> = [member("a", &[("zone", "x")]), member("b", &[("zone", "y")])].into();
        let sel = BTreeMap::from([("zone".to_string(), "y".to_string())]);
        for i in 0..50 {
            assert_eq!(owner(&m, &format!("j{i}"), &sel), Some("b"));
        }
        m.get_mut("b").unwrap().draining = true;
        assert_eq!(owner(&m, "j1", &sel), None);
    }

    #[test]
    fn a_worker_at_capacity_gives_its_jobs_to_the_next_worker_with_room_and_gets_them_back() {
        let mut m: BTreeMap<_, _> = ["w1", "w2", "w3"].iter().map(|id| member(id, &[])).collect();
        let jobs: Vec<String> = (0..300).map(|i| format!("job-{i}")).collect();
        let none = BTreeMap::new();
        let before: Vec<String> = jobs.iter().map(|j| owner(&m, j, &none).unwrap().to_string()).collect();
        m.get_mut("w1").unwrap().at_capacity = true;
        for (j, was) in jobs.iter().zip(&before) {
            let now = owner(&m, j, &none).unwrap();
            assert_ne!(now, "w1", "{j} stays on a full worker");
            if was != "w1" {
                assert_eq!(now, was, "{j} moved although its owner has room");
            }
        }
        // every eligible worker full: the usual owner keeps its jobs (and waits for a slot)
        for w in ["w2", "w3"] {
            m.get_mut(w).unwrap().at_capacity = true;
        }
        for (j, was) in jobs.iter().zip(&before) {
            assert_eq!(owner(&m, j, &none).unwrap(), was);
        }
        for w in ["w1", "w2", "w3"] {
            m.get_mut(w).unwrap().at_capacity = false;
        }
        for (j, was) in jobs.iter().zip(&before) {
            assert_eq!(owner(&m, j, &none).unwrap(), was, "{j} came back");
        }
    }

    #[test]
    fn a_worker_whose_clock_is_off_gives_its_jobs_to_workers_with_right_clocks_unless_there_is_none() {
        let mut m: BTreeMap<_, _> = ["w1", "w2", "w3"].iter().map(|id| member(id, &[])).collect();
        let jobs: Vec<String> = (0..300).map(|i| format!("job-{i}")).collect();
        let none = BTreeMap::new();
        let before: Vec<String> = jobs.iter().map(|j| owner(&m, j, &none).unwrap().to_string()).collect();
        m.get_mut("w1").unwrap().clock_skewed = true;
        // a right clock wins over room: w2 is full, yet takes w1's jobs rather than leave them
        m.get_mut("w2").unwrap().at_capacity = true;
        for (j, was) in jobs.iter().zip(&before) {
            let now = owner(&m, j, &none).unwrap();
            assert_ne!(now, "w1", "{j} stays on a worker whose clock is off");
            if was == "w3" {
                assert_eq!(now, "w3");
            }
        }
        for w in ["w2", "w3"] {
            m.get_mut(w).unwrap().clock_skewed = true;
        }
        m.get_mut("w2").unwrap().at_capacity = false;
        for (j, was) in jobs.iter().zip(&before) {
            assert_eq!(owner(&m, j, &none).unwrap(), was, "every clock is off: {j} stays put");
        }
        let mut r: BTreeMap<_, _> = [member("a", &[]), member("b", &[])].into();
        for w in r.values_mut() {
            w.dispatch = Dispatch::Race;
        }
        r.get_mut("a").unwrap().clock_skewed = true;
        assert!(!schedules(&r, "a", Dispatch::Race, "j", &none));
        assert!(schedules(&r, "b", Dispatch::Race, "j", &none));
    }

    #[test]
    fn race_workers_schedule_every_job_they_may_run_and_are_counted_so() {
        let mut m: BTreeMap<_, _> = [member("a", &[("zone", "x")]), member("b", &[])].into();
        m.get_mut("a").unwrap().dispatch = Dispatch::Race;
        m.get_mut("b").unwrap().dispatch = Dispatch::Race;
        let any = BTreeMap::new();
        let x = BTreeMap::from([("zone".to_string(), "x".to_string())]);
        assert!(schedules(&m, "a", Dispatch::Race, "j", &any));
        assert!(schedules(&m, "b", Dispatch::Race, "j", &any));
        assert!(!schedules(&m, "b", Dispatch::Race, "j", &x));
        assert!(!schedules(&m, "c", Dispatch::Race, "j", &any), "not a member");
        let counts = scheduled_counts(&m, [("j1", &any), ("j2", &any), ("j3", &x)]);
        assert_eq!(counts["a"], 3);
        assert_eq!(counts["b"], 2);
        // owner workers share the jobs; each job counts once among them
        let owners: BTreeMap<_, _> = ["o1", "o2"].iter().map(|id| member(id, &[])).collect();
        let counts = scheduled_counts(&owners, (0..10).map(|_| ("same", &any)));
        assert_eq!(counts.values().sum::<usize>(), 10);
        m.get_mut("a").unwrap().draining = true;
        assert!(
            !schedules(&m, "a", Dispatch::Race, "j", &any),
            "a draining worker schedules nothing"
        );
    }
}
