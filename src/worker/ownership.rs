//! Who schedules which job: rendezvous (highest-random-weight) hashing over the live, non-draining
//! workers whose labels match the job's selector. Every worker computes the same answer from the
//! same membership, without talking to the others; when a worker joins or leaves, only the jobs
//! it gains or loses move. The hash is fixed (FNV-1a + a 64-bit finaliser) so that every build
//! agrees.

use crate::model::WorkerInfo;
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

/// The owner of `job` among `members`, if any is eligible.
pub fn owner<'a>(
    members: &'a BTreeMap<String, WorkerInfo>,
    job: &str,
    selector: &BTreeMap<String, String>,
) -> Option<&'a str> {
    members
        .values()
        .filter(|m| !m.draining && m.matches(selector))
        .max_by_key(|m| (score(&m.id, job), m.id.as_str()))
        .map(|m| m.id.as_str())
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
}
