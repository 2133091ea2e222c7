//! The tick ledger's core: which expected ticks are due for accounting, and why one that
//! nobody claimed was missed. Sans-I/O like the scheduler core: it is fed job and membership
//! events and the time, and asked for the ticks whose accounting time has come; the shell
//! (`ledger::run`) looks each up in the run log and in etcd and writes what is missing.
//!
//! Expected ticks are the schedule's ticks while the job exists and is not paused, under the
//! spec in force at that tick: every change of a job closes a *segment* of its history at the
//! change's `updated_at`, and the next one starts there. A tick is due for accounting at
//! `planned + starting_deadline + grace`: by then a worker either claimed it (no worker claims a
//! tick past its deadline) or nobody will. Work per tick is O(log n) (one heap entry per job).

use crate::coord::{ClaimValue, JobEvent, JobRead, MemberEvent};
use crate::model::{StoredJob, WorkerInfo};
use crate::schedule::Schedule;
use crate::timer::TimerHeap;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// How long membership history is kept for the reasons of missed ticks.
const MEMBERSHIP_HISTORY_MS: i64 = 3600 * 1000;

/// A tick whose accounting time has come.
#[derive(Debug, Clone, PartialEq)]
pub struct DueTick {
    pub job: String,
    pub planned: i64,
    /// The job's starting deadline (ms) under the spec of that tick.
    pub deadline_ms: i64,
    pub selector: BTreeMap<String, String>,
}

/// One stretch of a job's history under one spec.
struct Segment {
    schedule: Arc<Schedule>,
    paused: bool,
    deadline_ms: i64,
    selector: BTreeMap<String, String>,
    /// Ticks after this (exclusive) …
    start: i64,
    /// … up to this (inclusive) belong to the segment; None while it is the current spec.
    end: Option<i64>,
}

struct JobTrack {
    revision: i64,
    segments: VecDeque<Segment>,
    /// The last tick handed out (ticks after it are next).
    cursor: i64,
    /// Bumped when the heap entry is replaced; older entries are stale.
    generation: u64,
}

/// The ledger's books.
pub struct Ledger {
    grace_ms: i64,
    jobs: HashMap<String, JobTrack>,
    /// Job name -> the names of its shards in `jobs` (`job#k`), so a change of one job touches
    /// its own parts only, not every job (O(1), not O(jobs)). A job that is not sharded is its
    /// own only part, under its own name.
    shards: HashMap<String, Vec<String>>,
    /// The job list being read in pages: its revision and the names its pages named so far.
    listing: Option<(i64, HashSet<String>)>,
    heap: TimerHeap<(String, u64)>,
    next_gen: u64,
    /// (since, the members from then on), oldest first.
    members: VecDeque<(i64, Vec<WorkerInfo>)>,
    /// Every tick due at or before this has been handed out.
    watermark: i64,
}

impl Ledger {
    /// Books that resume after `watermark`: ticks due at or before it are taken as accounted.
    pub fn new(watermark: i64, grace_ms: i64) -> Self {
        Ledger {
            grace_ms,
            jobs: HashMap::new(),
            shards: HashMap::new(),
            listing: None,
            heap: TimerHeap::default(),
            next_gen: 0,
            members: VecDeque::new(),
            watermark,
        }
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// When the next tick falls due.
    pub fn next_due(&self) -> Option<i64> {
        self.heap.next_at()
    }

    // ---- jobs --------------------------------------------------------------------------------

    /// Applies a change of the jobs at `now`. A schedule that no longer parses counts as gone
    /// (no worker runs it either).
    pub fn on_jobs(&mut self, now: i64, ev: JobEvent, parse: &mut impl FnMut(&StoredJob) -> Option<Arc<Schedule>>) {
        match ev {
            // a page of a list read in pages (`watch_jobs_paged`): its jobs exist
            JobEvent::Listed { jobs, revision } => self.listed_page(now, jobs, revision, parse),
            // the last page (or a whole list): a job no page of this list named is gone
            JobEvent::Reset { jobs, revision } => {
                self.listed_page(now, jobs, revision, parse);
                let present = self.listing.take().map(|(_, names)| names).unwrap_or_default();
                let gone: Vec<String> = self
                    .jobs
                    .keys()
                    .filter(|k| !present.contains(crate::model::part_of(k).0))
                    .cloned()
                    .collect();
                for name in gone {
                    self.close(&name, now);
                }
            }
            JobEvent::Saved(read) => self.saved(now, read, parse),
            JobEvent::Deleted { name, .. } => self.close_all(&name, now),
        }
    }

    /// One page of a job list at `revision`: the jobs changed since the books last saw them are
    /// saved, and every name is kept until the list ends. A page at another revision starts a
    /// new list (the one before was broken off and is read again).
    fn listed_page(
        &mut self,
        now: i64,
        jobs: Vec<JobRead>,
        revision: i64,
        parse: &mut impl FnMut(&StoredJob) -> Option<Arc<Schedule>>,
    ) {
        if self.listing.as_ref().is_none_or(|(r, _)| *r != revision) {
            self.listing = Some((revision, HashSet::new()));
        }
        for read in jobs {
            if let Some((_, names)) = self.listing.as_mut() {
                names.insert(read.name().to_string());
            }
            let first = self
                .jobs
                .get(read.name())
                .or_else(|| self.jobs.get(&crate::model::shard_part(read.name(), 0)));
            if first.map(|t| t.revision) != Some(read.revision()) {
                self.saved(now, read, parse);
            }
        }
    }

    /// The names of the job's parts in the books.
    fn parts_of(&self, job: &str) -> Vec<String> {
        let mut parts = self.shards.get(job).cloned().unwrap_or_default();
        if self.jobs.contains_key(job) {
            parts.push(job.to_string());
        }
        parts
    }

    /// Closes the job and each of its shards.
    fn close_all(&mut self, name: &str, now: i64) {
        for p in self.parts_of(name) {
            self.close(&p, now);
        }
    }

    /// A job saved: its books, or each shard's (`job#k`: every shard of a tick is a tick to
    /// account for).
    fn saved(&mut self, now: i64, read: JobRead, parse: &mut impl FnMut(&StoredJob) -> Option<Arc<Schedule>>) {
        let job = match read {
            JobRead::Job(j) => j,
            JobRead::Bad { name, .. } => {
                self.close_all(&name, now);
                return;
            }
        };
        let Some(schedule) = parse(&job) else {
            self.close_all(&job.spec.name, now);
            return;
        };
        let name = job.spec.name.clone();
        let parts: Vec<String> = match job.spec.shards {
            Some(n) => (0..n).map(|k| crate::model::shard_part(&name, k)).collect(),
            None => vec![name.clone()],
        };
        for p in self.parts_of(&name) {
            if !parts.contains(&p) {
                self.close(&p, now);
            }
        }
        for part in parts {
            self.saved_part(now, &job, &part, schedule.clone());
        }
    }

    fn saved_part(&mut self, now: i64, job: &StoredJob, name: &str, schedule: Arc<Schedule>) {
        let name = name.to_string();
        // under run_all a tick may still run until its catch-up window ends
        let deadline_ms = job.spec.overdue_window().as_millis() as i64;
        let change = job.updated_at.min(now);
        // a job first seen: only ticks not yet due count, and none before its last change
        let first_start = (self.watermark - deadline_ms - self.grace_ms).max(job.updated_at);
        if name != job.spec.name && !self.jobs.contains_key(&name) {
            self.shards.entry(job.spec.name.clone()).or_default().push(name.clone());
        }
        let track = self.jobs.entry(name.clone()).or_insert_with(|| JobTrack {
            revision: 0,
            // most jobs have one segment: room for more only when a change comes
            segments: VecDeque::with_capacity(1),
            cursor: first_start,
            generation: 0,
        });
        track.revision = job.revision;
        let start = match track.segments.back_mut() {
            Some(last) if last.end.is_none() => {
                last.end = Some(change.max(last.start));
                change.max(last.start)
            }
            Some(last) => last.end.unwrap_or(change).max(change),
            None => first_start,
        };
        track.segments.push_back(Segment {
            schedule,
            paused: job.spec.paused,
            deadline_ms,
            selector: job.spec.selector.clone(),
            start,
            end: None,
        });
        self.rearm(&name);
    }

    /// The job is gone from `now` on: ticks after it are not expected.
    fn close(&mut self, name: &str, now: i64) {
        if let Some(track) = self.jobs.get_mut(name)
            && let Some(last) = track.segments.back_mut()
            && last.end.is_none()
        {
            last.end = Some(now.max(last.start));
        }
        self.rearm(name);
    }

    /// Puts the job's next tick on the heap (or forgets the job when it has none left).
    fn rearm(&mut self, name: &str) {
        let grace = self.grace_ms;
        let Some(track) = self.jobs.get_mut(name) else { return };
        loop {
            let Some(seg) = track.segments.front() else {
                self.jobs.remove(name);
                let job = crate::model::part_of(name).0;
                if job != name
                    && let Some(shards) = self.shards.get_mut(job)
                {
                    shards.retain(|p| p != name);
                    if shards.is_empty() {
                        self.shards.remove(job);
                    }
                }
                return;
            };
            let from = track.cursor.max(seg.start);
            let next = if seg.paused {
                None
            } else {
                seg.schedule.next_after(from)
            };
            match next {
                Some(t) if seg.end.is_none_or(|e| t <= e) => {
                    self.next_gen += 1;
                    track.generation = self.next_gen;
                    self.heap
                        .push(t + seg.deadline_ms + grace, (name.to_string(), self.next_gen));
                    return;
                }
                // a closed segment with no tick left: the next segment takes over
                _ if seg.end.is_some() => {
                    track.segments.pop_front();
                }
                // the current spec has no further tick (or is paused): wait for a change
                _ => {
                    self.next_gen += 1;
                    track.generation = self.next_gen;
                    return;
                }
            }
        }
    }

    // ---- members -----------------------------------------------------------------------------

    pub fn on_members(&mut self, now: i64, ev: MemberEvent) {
        let mut current: BTreeMap<String, WorkerInfo> = self
            .members
            .back()
            .map(|(_, m)| m.iter().map(|w| (w.id.clone(), w.clone())).collect())
            .unwrap_or_default();
        match ev {
            MemberEvent::Reset(all) => current = all.into_iter().map(|w| (w.id.clone(), w)).collect(),
            MemberEvent::Up(w) => {
                current.insert(w.id.clone(), w);
            }
            MemberEvent::Left(id) => {
                current.remove(&id);
            }
        }
        self.members.push_back((now, current.into_values().collect()));
        // keep an hour, and the snapshot in force at its start
        while self.members.len() > 1 && self.members[1].0 < now - MEMBERSHIP_HISTORY_MS {
            self.members.pop_front();
        }
    }

    /// Whether the process that made `claim` is gone now: no member has its worker id, or the
    /// member under that id is another process (the worker was restarted under the same id).
    pub fn claimer_gone(&self, claim: &ClaimValue) -> bool {
        let member = self
            .members
            .back()
            .and_then(|(_, m)| m.iter().find(|w| w.id == claim.worker));
        claim.claimer_gone(member)
    }

    /// Why nobody claimed `tick` before its deadline: a metric label (`no_live_worker`,
    /// `no_matching_worker`, `not_claimed`) and words an operator can act on.
    pub fn reason(&self, tick: &DueTick) -> (&'static str, String) {
        let (from, to) = (tick.planned, tick.planned + tick.deadline_ms);
        // the snapshots in force during [from, to]
        let mut live = false;
        let mut eligible = 0usize;
        for (i, (since, members)) in self.members.iter().enumerate() {
            let until = self.members.get(i + 1).map(|(t, _)| *t).unwrap_or(i64::MAX);
            if until < from || *since > to {
                continue;
            }
            live |= !members.is_empty();
            eligible = eligible.max(
                members
                    .iter()
                    .filter(|w| crate::cluster::ownership::eligible(w, &tick.selector))
                    .count(),
            );
        }
        let selector = || {
            tick.selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        if !live {
            (
                "no_live_worker",
                "no live worker: start a worker (or check why they cannot reach etcd)".into(),
            )
        } else if eligible == 0 && !tick.selector.is_empty() {
            (
                "no_matching_worker",
                format!(
                    "no worker matches selector {{{}}}: start a worker with these labels or change the job's selector",
                    selector()
                ),
            )
        } else if eligible == 0 {
            (
                "no_live_worker",
                "no live worker could take it (every worker was draining)".into(),
            )
        } else {
            (
                "not_claimed",
                format!(
                    "not claimed before the starting deadline ({} s) although {eligible} eligible worker(s) were live: check their logs, CPU and their connection to etcd",
                    tick.deadline_ms / 1000
                ),
            )
        }
    }

    // ---- accounting ----------------------------------------------------------------------------

    /// The ticks due at or before `now`, in due order; the watermark moves to `now` (the shell
    /// persists it once it has accounted them).
    pub fn due(&mut self, now: i64) -> Vec<DueTick> {
        let mut out = Vec::new();
        while let Some((_, (name, generation))) = self.heap.pop_due(now) {
            let Some(track) = self.jobs.get_mut(&name) else {
                continue;
            };
            if track.generation != generation {
                continue;
            }
            let Some(seg) = track.segments.front() else { continue };
            let from = track.cursor.max(seg.start);
            let Some(planned) = (if seg.paused {
                None
            } else {
                seg.schedule.next_after(from)
            }) else {
                self.rearm(&name);
                continue;
            };
            if seg.end.is_some_and(|e| planned > e) {
                // the segment was closed after this entry was pushed: its tick is not expected
                track.segments.pop_front();
                self.rearm(&name);
                continue;
            }
            out.push(DueTick {
                job: name.clone(),
                planned,
                deadline_ms: seg.deadline_ms,
                selector: seg.selector.clone(),
            });
            track.cursor = planned;
            self.rearm(&name);
        }
        self.watermark = self.watermark.max(now);
        out
    }
}

/// The run id of the `missed` record of (job, planned): deterministic, so a tick is never
/// recorded missed twice, and shaped like the workers' UUIDv7 ids (32 hex digits, the first 48
/// bits the planned time in ms, version nibble 8), so it sorts with them.
pub fn missed_run_id(job: &str, planned: i64) -> String {
    let h1 = fnv1a(job.as_bytes(), 0xcbf29ce484222325 ^ 0x6d69_7373);
    let h2 = fnv1a(job.as_bytes(), 0x84222325cbf29ce4);
    format!(
        "{:012x}8{:03x}{:016x}",
        (planned.max(0) as u64) & 0xffff_ffff_ffff,
        (h1 >> 52) & 0xfff,
        h2
    )
}

fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dispatch, JobSpec};
    use std::time::Duration;

    const T0: i64 = 1_893_456_000_000;
    const GRACE: i64 = 5000;

    fn job(name: &str, schedule: &str, updated_at: i64, revision: i64) -> StoredJob {
        let mut spec = JobSpec::new(name, schedule, "true");
        spec.starting_deadline = Some(Duration::from_secs(10));
        StoredJob {
            spec,
            created_at: updated_at,
            updated_at,
            revision,
            paused_reason: None,
            paused_at: None,
            updated_by: None,
            signature: None,
        }
    }

    fn parse(j: &StoredJob) -> Option<Arc<Schedule>> {
        Schedule::parse_for_job(j.spec.effective_schedule(), &j.spec.timezone, &j.spec.name)
            .ok()
            .map(Arc::new)
    }

    fn save(l: &mut Ledger, now: i64, j: StoredJob) {
        l.on_jobs(now, JobEvent::Saved(JobRead::Job(Box::new(j))), &mut parse);
    }

    fn planned(due: &[DueTick]) -> Vec<i64> {
        due.iter().map(|d| d.planned).collect()
    }

    fn member(id: &str, labels: &[(&str, &str)]) -> WorkerInfo {
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
        }
    }

    #[test]
    fn each_tick_is_due_once_after_its_deadline_and_grace_in_order() {
        let mut l = Ledger::new(T0, GRACE);
        save(&mut l, T0, job("a", "@every 1s", T0, 2));
        // tick T0+1s is due at T0+1s+10s+5s
        assert!(l.due(T0 + 15_999).is_empty());
        assert_eq!(planned(&l.due(T0 + 16_000)), vec![T0 + 1000]);
        assert_eq!(planned(&l.due(T0 + 19_500)), vec![T0 + 2000, T0 + 3000, T0 + 4000]);
        assert!(l.due(T0 + 19_500).is_empty(), "nothing twice");
        assert_eq!(l.watermark(), T0 + 19_500);
        let d = &l.due(T0 + 20_000)[0];
        assert_eq!((d.planned, d.deadline_ms), (T0 + 5000, 10_000));
    }

    #[test]
    fn each_shard_of_a_sharded_jobs_tick_is_a_tick_to_account_for_and_fewer_shards_fewer() {
        let mut l = Ledger::new(T0, GRACE);
        let mut j = job("s", "@every 1s", T0, 2);
        j.spec.shards = Some(3);
        save(&mut l, T0, j);
        let due = l.due(T0 + 16_000);
        let names: Vec<&str> = due.iter().map(|d| d.job.as_str()).collect();
        assert_eq!(names, ["s#0", "s#1", "s#2"], "tick T0+1s, once per shard");
        assert!(due.iter().all(|d| d.planned == T0 + 1000));
        // down to one shard from T0+5.5s: the ticks after it have one part each
        let mut fewer = job("s", "@every 1s", T0 + 5500, 3);
        fewer.spec.shards = Some(1);
        save(&mut l, T0 + 5500, fewer);
        let later: Vec<(String, i64)> = l
            .due(T0 + 60_000)
            .into_iter()
            .filter(|d| d.planned > T0 + 6000)
            .map(|d| (d.job, d.planned))
            .collect();
        assert!(!later.is_empty());
        assert!(later.iter().all(|(j, _)| j == "s#0"), "{later:?}");
    }

    #[test]
    fn a_change_of_one_job_touches_its_own_parts_only_and_forgotten_jobs_leave_no_index() {
        let mut l = Ledger::new(T0, GRACE);
        let mut s = job("s", "@every 1s", T0, 2);
        s.spec.shards = Some(3);
        save(&mut l, T0, s);
        save(&mut l, T0, job("s-1", "@every 1s", T0, 2));
        save(&mut l, T0, job("s1", "@every 1s", T0, 2));
        // 3 shards -> 2, then the job is deleted: the jobs named like it keep every tick
        let mut two = job("s", "@every 1s", T0 + 2500, 3);
        two.spec.shards = Some(2);
        save(&mut l, T0 + 2500, two);
        let del = JobEvent::Deleted {
            name: "s".into(),
            revision: 4,
        };
        l.on_jobs(T0 + 4500, del, &mut parse);
        let indexed = |l: &Ledger| -> (usize, usize) {
            let in_books = l.jobs.keys().filter(|k| k.contains('#')).count();
            (l.shards.values().map(Vec::len).sum(), in_books)
        };
        assert_eq!(
            indexed(&l),
            (3, 3),
            "closed shards stay until their ticks are accounted"
        );
        let due = l.due(T0 + 60_000);
        let of = |name: &str| -> Vec<i64> { due.iter().filter(|d| d.job == name).map(|d| d.planned).collect() };
        assert_eq!(of("s#0"), (1..=4).map(|k| T0 + k * 1000).collect::<Vec<_>>());
        assert_eq!(of("s#2"), vec![T0 + 1000, T0 + 2000], "gone with the change at 2.5 s");
        assert_eq!(of("s-1").len(), 45, "from 1 s to 45 s");
        assert_eq!(of("s1").len(), 45);
        assert_eq!(indexed(&l), (0, 0), "accounted shards are forgotten, also by the index");
        for name in ["s-1", "s1"] {
            let del = JobEvent::Deleted {
                name: name.into(),
                revision: 5,
            };
            l.on_jobs(T0 + 60_000, del, &mut parse);
        }
        l.due(T0 + 120_000);
        assert_eq!((l.jobs(), l.shards.len()), (0, 0), "nothing left behind");
    }

    #[test]
    fn a_job_list_read_in_pages_keeps_what_any_page_named_and_a_broken_list_counts_for_nothing() {
        let mut l = Ledger::new(T0, GRACE);
        for name in ["a", "b", "c"] {
            save(&mut l, T0, job(name, "@every 1s", T0, 2));
        }
        let read = |name: &str, rev: i64| JobRead::Job(Box::new(job(name, "@every 1s", T0, rev)));
        // a list broken off after a page naming c, then read again (at another revision)
        // without c: c is gone from the end of the list that completes
        let page = |jobs, revision| JobEvent::Listed { jobs, revision };
        l.on_jobs(T0 + 1500, page(vec![read("c", 2)], 10), &mut parse);
        l.on_jobs(T0 + 2500, page(vec![read("a", 2)], 12), &mut parse);
        assert_eq!(l.jobs(), 3, "nothing is gone while the list is being read");
        let last = JobEvent::Reset {
            jobs: vec![read("b", 2)],
            revision: 12,
        };
        l.on_jobs(T0 + 3500, last, &mut parse);
        let due = l.due(T0 + 60_000);
        let count = |name: &str| due.iter().filter(|d| d.job == name).count();
        assert_eq!((count("a"), count("b")), (45, 45), "named by a page: every tick");
        assert_eq!(
            count("c"),
            3,
            "named by no page of the list that completed: gone at its end"
        );
    }

    #[test]
    fn a_run_all_tick_is_due_after_its_catchup_window_not_its_starting_deadline() {
        let mut l = Ledger::new(T0, GRACE);
        let mut j = job("c", "@every 1s", T0, 2);
        j.spec.misfire = crate::model::Misfire::RunAll;
        j.spec.catchup_window = Some(Duration::from_secs(60));
        save(&mut l, T0, j);
        // tick T0+1s may still run until T0+1s+60s: due at T0+1s+60s+5s
        assert!(l.due(T0 + 65_999).is_empty());
        assert_eq!(planned(&l.due(T0 + 66_000)), vec![T0 + 1000]);
    }

    #[test]
    fn a_paused_stretch_has_no_expected_ticks() {
        let mut l = Ledger::new(T0, GRACE);
        save(&mut l, T0, job("p", "@every 1s", T0, 2));
        let mut paused = job("p", "@every 1s", T0 + 3500, 3);
        paused.spec.paused = true;
        save(&mut l, T0 + 3500, paused);
        save(&mut l, T0 + 7500, job("p", "@every 1s", T0 + 7500, 4));
        let all = planned(&l.due(T0 + 60_000));
        let want: Vec<i64> = [1, 2, 3, 8, 9]
            .into_iter()
            .map(|s| T0 + s * 1000)
            .chain((10..=45).map(|s| T0 + s * 1000))
            .collect();
        assert_eq!(all, want);
    }

    #[test]
    fn a_schedule_change_is_followed_tick_by_tick() {
        let mut l = Ledger::new(T0, GRACE);
        save(&mut l, T0, job("s", "@every 2s", T0, 2));
        save(&mut l, T0 + 5000, job("s", "@every 3s", T0 + 5000, 3));
        let all = planned(&l.due(T0 + 30_000));
        // every 2 s until the change at 5 s, then every 3 s (epoch-aligned: 6, 9, 12, 15)
        assert_eq!(
            all,
            vec![T0 + 2000, T0 + 4000, T0 + 6000, T0 + 9000, T0 + 12_000, T0 + 15_000]
        );
    }

    #[test]
    fn a_deleted_job_has_no_ticks_after_its_deletion_but_the_ones_before_still_count() {
        let mut l = Ledger::new(T0, GRACE);
        save(&mut l, T0, job("d", "@every 1s", T0, 2));
        l.on_jobs(
            T0 + 2500,
            JobEvent::Deleted {
                name: "d".into(),
                revision: 3,
            },
            &mut parse,
        );
        assert_eq!(planned(&l.due(T0 + 60_000)), vec![T0 + 1000, T0 + 2000]);
        assert_eq!(l.jobs(), 0, "forgotten once accounted");
    }

    #[test]
    fn books_resumed_from_a_watermark_start_after_it_and_after_the_jobs_last_change() {
        // the previous ledger accounted every tick due up to W
        let w = T0 + 100_000;
        let mut l = Ledger::new(w, GRACE);
        save(&mut l, w, job("old", "@every 1s", T0, 2));
        save(&mut l, w, job("new", "@every 1s", w - 12_500, 3));
        let due = l.due(w + 2000);
        let old: Vec<i64> = due.iter().filter(|d| d.job == "old").map(|d| d.planned).collect();
        let new: Vec<i64> = due.iter().filter(|d| d.job == "new").map(|d| d.planned).collect();
        // due in (W, W+2s] means planned in (W-15s, W-13s]
        assert_eq!(old, vec![w - 14_000, w - 13_000]);
        // and not before the job's last change at W-12.5s
        assert!(new.is_empty(), "{new:?}");
    }

    #[test]
    fn a_job_that_is_bad_or_never_fires_waits_for_a_change() {
        let mut l = Ledger::new(T0, GRACE);
        save(&mut l, T0, job("y", "0 0 1 1 * 2020", T0, 2));
        assert!(l.due(T0 + 10_000_000).is_empty());
        l.on_jobs(
            T0,
            JobEvent::Saved(JobRead::Bad {
                name: "y".into(),
                revision: 3,
                error: "x".into(),
            }),
            &mut parse,
        );
        assert_eq!(l.jobs(), 0);
    }

    #[test]
    fn the_reason_of_a_missed_tick_says_what_to_do() {
        let mut l = Ledger::new(T0, GRACE);
        let mut tick = DueTick {
            job: "j".into(),
            planned: T0 + 1000,
            deadline_ms: 10_000,
            selector: BTreeMap::new(),
        };
        l.on_members(T0, MemberEvent::Reset(vec![]));
        assert!(l.reason(&tick).1.starts_with("no live worker"), "{}", l.reason(&tick).1);
        l.on_members(T0 + 500, MemberEvent::Up(member("w1", &[("zone", "a")])));
        tick.selector = BTreeMap::from([("zone".to_string(), "x".to_string())]);
        assert_eq!(
            l.reason(&tick).1,
            "no worker matches selector {zone=x}: start a worker with these labels or change the job's selector"
        );
        tick.selector = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        assert!(
            l.reason(&tick)
                .1
                .starts_with("not claimed before the starting deadline (10 s) although 1 eligible")
        );
        // a worker that only came after the tick's deadline does not count
        let mut late = tick.clone();
        late.planned = T0 - 20_000;
        late.selector = BTreeMap::new();
        assert!(l.reason(&late).1.starts_with("no live worker"), "{}", l.reason(&late).1);
    }

    #[test]
    fn a_claim_is_a_dead_process_s_when_its_worker_left_or_was_restarted_under_the_same_id() {
        let mut l = Ledger::new(T0, GRACE);
        let claim = |worker: &str, started: Option<i64>| ClaimValue {
            worker: worker.into(),
            run_id: "r".into(),
            claimed_at: T0,
            worker_started_at: started,
        };
        let mut w1 = member("w1", &[]);
        w1.started_at = T0 - 5000;
        l.on_members(T0, MemberEvent::Reset(vec![w1.clone()]));
        assert!(
            !l.claimer_gone(&claim("w1", Some(T0 - 5000))),
            "the live process's own claim"
        );
        assert!(
            !l.claimer_gone(&claim("w1", None)),
            "a claim of an older version: the member's"
        );
        assert!(l.claimer_gone(&claim("w2", Some(T0 - 5000))), "no member w2");
        // w1 crashed and was restarted under its id before the ledger looked
        w1.started_at = T0 + 500;
        l.on_members(T0 + 1000, MemberEvent::Up(w1));
        assert!(
            l.claimer_gone(&claim("w1", Some(T0 - 5000))),
            "the dead process's claim is nobody's now"
        );
        assert!(!l.claimer_gone(&claim("w1", Some(T0 + 500))));
    }

    #[test]
    fn missed_run_ids_are_deterministic_distinct_and_time_ordered() {
        let a = missed_run_id("job-a", T0);
        assert_eq!(a, missed_run_id("job-a", T0));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, missed_run_id("job-b", T0));
        assert_ne!(a, missed_run_id("job-a", T0 + 1000));
        assert!(
            missed_run_id("zzz", T0) < missed_run_id("aaa", T0 + 1),
            "sorted by planned time first"
        );
    }
}
