//! The dependency driver's decisions, without I/O and without a clock: the fleet's dependency
//! graph (its checks: unknown upstreams, cycles, dependents), what an upstream's records of a
//! root tick say of its condition, what becomes of a downstream's root tick, and when a run
//! request is sent again. The shell (`super`) reads etcd and the run log, asks these functions,
//! and writes what they decide.

use crate::coord::ClaimValue;
use crate::master::backfill::core::{Evidence, RECHECK_MS, Recheck, is_final, recheck, request_id};
use crate::model::{DepCondition, JobSpec, Root, RunRecord, RunStatus, Upstream};
use std::collections::{BTreeMap, BTreeSet};

/// How long past a root tick's `after_timeout` its records are still looked at (a decision
/// written and its record lost is made again within this).
pub const GRACE_MS: i64 = 10 * 60 * 1000;

/// The jobs that run after others, and whom each runs after.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// job -> its upstreams (only jobs with `after`).
    up: BTreeMap<String, Vec<Upstream>>,
    /// job -> the jobs that run after it.
    down: BTreeMap<String, Vec<String>>,
}

impl Graph {
    /// The graph of these jobs' `after` lists.
    pub fn of<'a>(jobs: impl IntoIterator<Item = &'a JobSpec>) -> Graph {
        let mut g = Graph::default();
        for j in jobs {
            if j.after.is_empty() {
                continue;
            }
            g.up.insert(j.name.clone(), j.after.clone());
            for u in &j.after {
                g.down.entry(u.job.clone()).or_default().push(j.name.clone());
            }
        }
        for d in g.down.values_mut() {
            d.sort();
            d.dedup();
        }
        g
    }

    /// The jobs that run after `job` (sorted).
    pub fn downstreams(&self, job: &str) -> &[String] {
        self.down.get(job).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whom `job` runs after.
    pub fn upstreams(&self, job: &str) -> &[Upstream] {
        self.up.get(job).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The jobs that run after others.
    pub fn dependent_jobs(&self) -> impl Iterator<Item = &String> {
        self.up.keys()
    }

    /// Every edge (upstream, downstream, condition), by downstream then upstream order.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &str, DepCondition)> {
        self.up
            .iter()
            .flat_map(|(d, ups)| ups.iter().map(move |u| (u.job.as_str(), d.as_str(), u.on)))
    }

    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }
}

/// Why a job's `after` cannot be stored beside the other jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// It names jobs that do not exist.
    UnknownUpstreams(Vec<String>),
    /// Storing it would close a cycle: the jobs in order, first and last the same.
    Cycle(Vec<String>),
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::UnknownUpstreams(j) => write!(
                f,
                "names {} that {} not exist: create {} first",
                j.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
                if j.len() == 1 { "does" } else { "do" },
                if j.len() == 1 { "it" } else { "them" },
            ),
            GraphError::Cycle(path) => write!(f, "a cycle: {}", path.join(" -> ")),
        }
    }
}

/// Checks `spec` (created or replaced) against the other stored jobs: every upstream exists
/// and no cycle is closed (also through jobs that depend on `spec`).
pub fn check(spec: &JobSpec, others: &BTreeMap<String, JobSpec>) -> Result<(), GraphError> {
    let unknown: Vec<String> = spec
        .after
        .iter()
        .filter(|u| u.job != spec.name && !others.contains_key(&u.job))
        .map(|u| u.job.clone())
        .collect();
    if !unknown.is_empty() {
        return Err(GraphError::UnknownUpstreams(unknown));
    }
    let mut all: BTreeMap<&str, &JobSpec> = others.iter().map(|(k, v)| (k.as_str(), v)).collect();
    all.insert(&spec.name, spec);
    let g = Graph::of(all.values().copied());
    match path_back(&g, &spec.name) {
        Some(p) => Err(GraphError::Cycle(p)),
        None => Ok(()),
    }
}

/// The jobs `spec` runs after, directly or through others (by the other jobs' `after`).
pub fn ancestors(spec: &JobSpec, others: &BTreeMap<String, JobSpec>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack: Vec<&str> = spec.after.iter().map(|u| u.job.as_str()).collect();
    while let Some(j) = stack.pop() {
        if j == spec.name || !out.insert(j.to_string()) {
            continue;
        }
        if let Some(o) = others.get(j) {
            stack.extend(o.after.iter().map(|u| u.job.as_str()));
        }
    }
    out
}

/// The shortest path from `start` along downstream edges back to `start`, if any.
fn path_back(g: &Graph, start: &str) -> Option<Vec<String>> {
    // breadth first, so the cycle named is the shortest one
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    while let Some(j) = queue.pop_front() {
        for d in g.downstreams(j) {
            if d == start {
                // j, its predecessor, …, back to start; then in flow order, closed
                let mut chain = vec![j];
                let mut at = j;
                while at != start {
                    at = prev[at];
                    chain.push(at);
                }
                chain.reverse();
                chain.push(start);
                return Some(chain.into_iter().map(str::to_string).collect());
            }
            if seen.insert(d) {
                prev.insert(d, j);
                queue.push_back(d);
            }
        }
    }
    None
}

/// What an upstream's records of a root tick say of its condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpState {
    /// Its last attempt met the condition.
    Met,
    /// No last record yet (nothing, or a retry follows).
    Pending,
    /// It can be met no more: the reason recorded for the downstream.
    Unmeetable(String),
}

/// How many runs an upstream's tick has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// One (a job's own run).
    One,
    /// One per shard.
    Shards(u32),
    /// One per eligible live worker (`fanout = all`): how many is known only once they have
    /// all come: `settled` when no run of the tick is in progress and the last ended a while
    /// ago (the shell's call).
    Everyone { settled: bool },
}

/// The state of `up` at a root tick, from the records of `up.job` planned then; `retries` is
/// the upstream's own (an attempt a retry follows is not its last). A sharded or fanned-out
/// upstream succeeded when all its runs of the tick did.
pub fn upstream_state(up: &Upstream, records: &[RunRecord], retries: u32, parts: Parts) -> UpState {
    // each run's last attempt: by shard, by worker, or the one
    let mut lasts: BTreeMap<String, &RunRecord> = BTreeMap::new();
    for r in records {
        let key = match parts {
            Parts::One => String::new(),
            Parts::Shards(_) => r.shard.map(|s| s.to_string()).unwrap_or_default(),
            Parts::Everyone { .. } => r.worker.clone(),
        };
        let e = lasts.entry(key).or_insert(r);
        if (r.attempt, r.ended_at) > (e.attempt, e.ended_at) {
            *e = r;
        }
    }
    if lasts.is_empty() {
        return UpState::Pending;
    }
    if lasts
        .values()
        .any(|l| matches!(l.status, RunStatus::Skipped | RunStatus::Missed))
    {
        return UpState::Unmeetable(format!("upstream_skipped: {}", up.job));
    }
    let finals: Vec<&&RunRecord> = lasts.values().filter(|l| is_final(l, retries)).collect();
    // a run that failed for good fails an `on = success` at once, whatever the others do
    if up.on == DepCondition::Success && finals.iter().any(|l| l.status != RunStatus::Succeeded) {
        return UpState::Unmeetable(format!("upstream_failed: {}", up.job));
    }
    let all_in = finals.len() == lasts.len()
        && match parts {
            Parts::One => true,
            Parts::Shards(n) => lasts.len() >= n as usize,
            Parts::Everyone { settled } => settled,
        };
    if !all_in {
        return UpState::Pending;
    }
    let ok = finals.iter().all(|l| l.status == RunStatus::Succeeded);
    match (up.on, ok) {
        (DepCondition::Finished, _) | (DepCondition::Success, true) | (DepCondition::Failure, false) => UpState::Met,
        (DepCondition::Success, false) => UpState::Unmeetable(format!("upstream_failed: {}", up.job)),
        (DepCondition::Failure, true) => UpState::Unmeetable(format!("upstream_succeeded: {}", up.job)),
    }
}

/// What becomes of a downstream's root tick that has no decision yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decide {
    /// Every upstream met its condition: run it for this root.
    Run(Root),
    /// Record it skipped with this reason (`upstream_failed: x`, `upstream_timeout: …`, …).
    Skip { reason: String, root: Root },
    /// Some upstream has not come to its last record yet: look again by `until` at the latest
    /// (the timeout).
    Wait { until: i64 },
}

/// One upstream of a root tick: its condition, its state, and the root its records carry.
#[derive(Debug, Clone)]
pub struct Seen {
    pub up: Upstream,
    pub state: UpState,
    pub root: Option<Root>,
}

/// Decides a downstream's root tick `planned` at `now` from its upstreams (in `after` order).
pub fn decide(d: &JobSpec, planned: i64, seen: &[Seen], now: i64) -> Decide {
    // the root: the one the upstreams' records carry (the first by job name if they differ)
    let root = seen
        .iter()
        .filter_map(|s| s.root.clone())
        .min_by(|a, b| a.job.cmp(&b.job))
        .unwrap_or_else(|| Root {
            job: d.after.first().map(|u| u.job.clone()).unwrap_or_default(),
            planned_at: planned,
        });
    if let Some(reason) = seen.iter().find_map(|s| match &s.state {
        UpState::Unmeetable(r) => Some(r.clone()),
        _ => None,
    }) {
        return Decide::Skip { reason, root };
    }
    let waiting: Vec<&str> = seen
        .iter()
        .filter(|s| s.state == UpState::Pending)
        .map(|s| s.up.job.as_str())
        .collect();
    if waiting.is_empty() {
        if d.paused {
            return Decide::Skip {
                reason: "paused".into(),
                root,
            };
        }
        return Decide::Run(root);
    }
    let until = planned + d.after_timeout().as_millis() as i64;
    if now >= until {
        return Decide::Skip {
            reason: format!(
                "upstream_timeout: no run of {} met its condition within {} of the root tick",
                waiting.join(", "),
                humantime::format_duration(d.after_timeout())
            ),
            root,
        };
    }
    Decide::Wait { until }
}

/// The id of the first run request for a downstream's root tick (also the first attempt's run
/// id). Deterministic: a driver that took over sends what its predecessor would. A request
/// sent again gets a new random id (a worker takes a claim under its own id for its own).
pub fn run_request_id(job: &str, planned: i64, sends: u32) -> String {
    request_id(&format!("dep\0{job}"), planned, sends)
}

/// The run id of a downstream's skipped record for a root tick (the same whoever writes it:
/// a record written twice is stored once).
pub fn skip_record_id(job: &str, planned: i64) -> String {
    request_id(&format!("dep-skip\0{job}"), planned, 0)
}

/// What to do with a root tick decided `run` that has no record of the downstream yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowUp {
    /// Looked at too lately, or someone has it: wait.
    Wait,
    /// Nobody has it: send the request again (the claim key makes a second run impossible;
    /// a claim of a gone worker is recorded `lost` by the owner).
    SendAgain,
}

/// What the driver knows of a decided root tick without a record of the downstream.
#[derive(Debug, Clone, Copy)]
pub struct Pending<'a> {
    /// When it was decided or last sent (Unix ms, the masters' clock).
    pub sent_at: i64,
    pub request_waiting: bool,
    pub running: bool,
    pub claim: Option<&'a ClaimValue>,
    pub claimer_gone: bool,
}

pub fn follow_up(p: Pending<'_>, now: i64) -> FollowUp {
    if now - p.sent_at < RECHECK_MS {
        return FollowUp::Wait;
    }
    match recheck(Evidence {
        request_waiting: p.request_waiting,
        running: p.running,
        attempted: false,
        claim: p.claim,
        claimer_gone: p.claimer_gone,
    }) {
        Recheck::Wait => FollowUp::Wait,
        Recheck::SendAgain => FollowUp::SendAgain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunRecord, Trigger};

    fn job(name: &str, after: &[&str]) -> JobSpec {
        let mut j = JobSpec::new(name, "", "true");
        if after.is_empty() {
            j.schedule = "@every 2s".into();
        }
        j.after = after
            .iter()
            .map(|u| Upstream {
                job: u.to_string(),
                on: DepCondition::Success,
            })
            .collect();
        j
    }

    fn fleet(jobs: &[JobSpec]) -> BTreeMap<String, JobSpec> {
        jobs.iter().map(|j| (j.name.clone(), j.clone())).collect()
    }

    fn rec(job: &str, status: RunStatus, attempt: u32, ended: i64) -> RunRecord {
        let mut r = RunRecord::new(job, "r", attempt, Trigger::Schedule, 1000, "w", status);
        r.ended_at = Some(ended);
        r
    }

    fn up(job: &str, on: DepCondition) -> Upstream {
        Upstream { job: job.into(), on }
    }

    #[test]
    fn a_job_after_an_unknown_one_is_refused_naming_it() {
        let e = check(&job("b", &["nope", "a"]), &fleet(&[job("a", &[])])).unwrap_err();
        assert_eq!(e, GraphError::UnknownUpstreams(vec!["nope".into()]));
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn a_cycle_is_refused_naming_it_in_order() {
        // a after b exists; b after a would close a -> b -> a
        let others = fleet(&[job("a", &["b"]), job("c", &[])]);
        let mut b = job("b", &["a"]);
        let e = check(&b, &fleet(&[job("a", &["b"])])).unwrap_err();
        assert_eq!(e.to_string(), "a cycle: b -> a -> b");
        // a longer one: x -> y -> z -> x
        let others2 = fleet(&[job("x", &["z"]), job("y", &["x"])]);
        let e = check(&job("z", &["y"]), &others2).unwrap_err();
        assert_eq!(e.to_string(), "a cycle: z -> x -> y -> z");
        // no cycle: b after c
        b.after = vec![up("c", DepCondition::Success)];
        assert_eq!(check(&b, &others), Ok(()));
    }

    #[test]
    fn a_diamond_is_no_cycle_and_downstreams_are_listed() {
        let jobs = [job("r", &[]), job("a", &["r"]), job("c", &["r"]), job("d", &["a", "c"])];
        let f = fleet(&jobs);
        assert_eq!(check(&jobs[3], &f), Ok(()));
        let g = Graph::of(f.values());
        assert_eq!(g.downstreams("r"), ["a", "c"]);
        assert_eq!(g.downstreams("a"), ["d"]);
        assert_eq!(g.edges().count(), 4);
        // what a write of d compares: every job it runs after, through the others too
        let anc: Vec<String> = ancestors(&jobs[3], &f).into_iter().collect();
        assert_eq!(anc, ["a", "c", "r"]);
    }

    #[test]
    fn an_upstreams_last_attempt_decides_its_condition() {
        let s = up("a", DepCondition::Success);
        assert_eq!(upstream_state(&s, &[], 0, Parts::One), UpState::Pending);
        assert_eq!(
            upstream_state(&s, &[rec("a", RunStatus::Succeeded, 1, 5)], 0, Parts::One),
            UpState::Met
        );
        assert_eq!(
            upstream_state(&s, &[rec("a", RunStatus::Failed, 1, 5)], 0, Parts::One),
            UpState::Unmeetable("upstream_failed: a".into())
        );
        // a retry follows a failed first attempt: not yet
        assert_eq!(
            upstream_state(&s, &[rec("a", RunStatus::Failed, 1, 5)], 1, Parts::One),
            UpState::Pending
        );
        assert_eq!(
            upstream_state(
                &s,
                &[rec("a", RunStatus::Failed, 1, 5), rec("a", RunStatus::Succeeded, 2, 9)],
                1,
                Parts::One
            ),
            UpState::Met
        );
        let f = up("a", DepCondition::Failure);
        assert_eq!(
            upstream_state(&f, &[rec("a", RunStatus::TimedOut, 1, 5)], 0, Parts::One),
            UpState::Met
        );
        assert_eq!(
            upstream_state(&f, &[rec("a", RunStatus::Succeeded, 1, 5)], 0, Parts::One),
            UpState::Unmeetable("upstream_succeeded: a".into())
        );
        let any = up("a", DepCondition::Finished);
        assert_eq!(
            upstream_state(&any, &[rec("a", RunStatus::Lost, 1, 5)], 0, Parts::One),
            UpState::Met
        );
        assert_eq!(
            upstream_state(&any, &[rec("a", RunStatus::Skipped, 1, 5)], 0, Parts::One),
            UpState::Unmeetable("upstream_skipped: a".into())
        );
    }

    #[test]
    fn a_sharded_or_fanned_out_upstream_succeeded_when_all_its_runs_did() {
        let s = up("a", DepCondition::Success);
        let shard = |k: u32, st: RunStatus| {
            let mut r = rec("a", st, 1, 5);
            r.shard = Some(k);
            r
        };
        let two = [shard(0, RunStatus::Succeeded), shard(1, RunStatus::Succeeded)];
        assert_eq!(
            upstream_state(&s, &two, 0, Parts::Shards(3)),
            UpState::Pending,
            "shard 2 has not come"
        );
        let three = [two[0].clone(), two[1].clone(), shard(2, RunStatus::Succeeded)];
        assert_eq!(upstream_state(&s, &three, 0, Parts::Shards(3)), UpState::Met);
        // one shard failing fails it at once
        assert_eq!(
            upstream_state(&s, &[shard(1, RunStatus::Failed)], 0, Parts::Shards(3)),
            UpState::Unmeetable("upstream_failed: a".into())
        );
        let f = up("a", DepCondition::Failure);
        assert_eq!(
            upstream_state(
                &f,
                &[shard(1, RunStatus::Failed), shard(0, RunStatus::Succeeded)],
                0,
                Parts::Shards(2)
            ),
            UpState::Met
        );
        let on = |w: &str| {
            let mut r = rec("a", RunStatus::Succeeded, 1, 5);
            r.worker = w.into();
            r
        };
        let runs = [on("w1"), on("w2")];
        assert_eq!(
            upstream_state(&s, &runs, 0, Parts::Everyone { settled: false }),
            UpState::Pending
        );
        assert_eq!(
            upstream_state(&s, &runs, 0, Parts::Everyone { settled: true }),
            UpState::Met
        );
    }

    fn seen(job: &str, state: UpState) -> Seen {
        Seen {
            up: up(job, DepCondition::Success),
            state,
            root: Some(Root {
                job: "r".into(),
                planned_at: 1000,
            }),
        }
    }

    #[test]
    fn a_fan_in_runs_once_every_upstream_met_and_times_out_otherwise() {
        let mut d = job("d", &["a", "c"]);
        d.after_timeout = Some(std::time::Duration::from_secs(4));
        let root = Root {
            job: "r".into(),
            planned_at: 1000,
        };
        assert_eq!(
            decide(&d, 1000, &[seen("a", UpState::Met), seen("c", UpState::Met)], 1500),
            Decide::Run(root.clone())
        );
        assert_eq!(
            decide(&d, 1000, &[seen("a", UpState::Met), seen("c", UpState::Pending)], 4999),
            Decide::Wait { until: 5000 }
        );
        match decide(&d, 1000, &[seen("a", UpState::Met), seen("c", UpState::Pending)], 5000) {
            Decide::Skip { reason, root: r } => {
                assert!(reason.starts_with("upstream_timeout: no run of c "), "{reason}");
                assert_eq!(r, root);
            }
            other => panic!("{other:?}"),
        }
        // an unmeetable upstream skips at once, without waiting for the other
        assert_eq!(
            decide(
                &d,
                1000,
                &[
                    seen("a", UpState::Pending),
                    seen("c", UpState::Unmeetable("upstream_failed: c".into()))
                ],
                1200
            ),
            Decide::Skip {
                reason: "upstream_failed: c".into(),
                root: root.clone()
            }
        );
        d.paused = true;
        assert!(matches!(
            decide(&d, 1000, &[seen("a", UpState::Met), seen("c", UpState::Met)], 1500),
            Decide::Skip { reason, .. } if reason == "paused"
        ));
    }

    #[test]
    fn ids_are_the_same_for_every_driver_and_shaped_like_run_ids() {
        let a = run_request_id("b", 1_700_000_000_000, 0);
        assert_eq!(a, run_request_id("b", 1_700_000_000_000, 0));
        assert_ne!(a, run_request_id("b", 1_700_000_000_000, 1));
        assert_ne!(a, run_request_id("c", 1_700_000_000_000, 0));
        assert_ne!(a, skip_record_id("b", 1_700_000_000_000));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn a_decided_run_is_sent_again_only_when_nobody_has_it_after_the_recheck_time() {
        let p = Pending {
            sent_at: 0,
            request_waiting: false,
            running: false,
            claim: None,
            claimer_gone: false,
        };
        assert_eq!(follow_up(p, RECHECK_MS - 1), FollowUp::Wait);
        assert_eq!(follow_up(p, RECHECK_MS), FollowUp::SendAgain);
        let c = ClaimValue {
            worker: "w1".into(),
            run_id: "x".into(),
            claimed_at: 0,
            worker_started_at: None,
        };
        let held = Pending { claim: Some(&c), ..p };
        assert_eq!(follow_up(held, RECHECK_MS), FollowUp::Wait);
        let gone = Pending {
            claim: Some(&c),
            claimer_gone: true,
            ..p
        };
        assert_eq!(follow_up(gone, RECHECK_MS), FollowUp::SendAgain);
        let waiting = Pending {
            request_waiting: true,
            ..p
        };
        assert_eq!(follow_up(waiting, RECHECK_MS), FollowUp::Wait);
    }
}
