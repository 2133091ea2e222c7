//! Jobs held thin: of a job this worker does not own, the core keeps only what ownership needs
//! (selector, paused, fanout), the names it runs after (for the dependency counts), its revision
//! and how far its claims went. The full spec is kept while the worker owns the job or still has
//! something of it (overdue ticks, ticks in flight, a run-now request, a buffer being taken).
//! When ownership moves here, the spec is fetched from etcd (`Effect::FetchJobs`, batched) and
//! the job's ticks are decided from the moment it was gained, so a slow fetch delays ticks but
//! loses none. A million jobs then cost a worker the thin entries plus the specs it owns.
use super::*;

/// A failed fetch is tried again after this long.
const FETCH_RETRY_MS: i64 = 1000;

/// What ownership needs of a job; one shared value for every job that has the same.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Eligibility {
    pub selector: BTreeMap<String, String>,
    pub paused: bool,
    pub fanout_all: bool,
}

/// A job part this worker does not own, without its spec.
pub(super) struct Thin {
    pub revision: i64,
    pub decided_until: i64,
    pub eligibility: Arc<Eligibility>,
    /// The jobs it runs after (each counted once in `downstreams`).
    pub upstreams: Option<Box<[String]>>,
    /// The job list that last named it (`JobState::listed`).
    pub listed: u64,
}

/// A job whose spec is being read because one of its parts became this worker's (or a run-now
/// request for it came here).
#[derive(Debug, Clone, Copy)]
pub(super) struct Fetch {
    /// When the part was gained: ticks are looked for from here, whatever the fetch took.
    pub gained_at: i64,
    pub lookback: Lookback,
    pub in_flight: bool,
}

impl Core {
    /// The shared `Eligibility` of `spec`.
    fn eligibility_of(&mut self, spec: &crate::model::JobSpec) -> Arc<Eligibility> {
        let e = Eligibility {
            selector: spec.selector.clone(),
            paused: spec.paused,
            fanout_all: spec.fanout == crate::model::Fanout::All,
        };
        if let Some(shared) = self.eligibilities.get(&e) {
            return shared.clone();
        }
        // drop the values no job holds any more, now and then (amortised O(1))
        if self.eligibilities.len() >= 2 * self.eligibilities_kept + 64 {
            self.eligibilities.retain(|e| Arc::strong_count(e) > 1);
            self.eligibilities_kept = self.eligibilities.len();
        }
        let shared = Arc::new(e);
        self.eligibilities.insert(shared.clone());
        shared
    }

    /// Whether this worker should schedule the job part `name` with this eligibility.
    pub(super) fn owns(&self, name: &str, selector: &BTreeMap<String, String>, paused: bool, fanout_all: bool) -> bool {
        if self.draining || paused {
            return false;
        }
        if fanout_all {
            // this worker's own run of a job for every worker: while it is eligible
            return self
                .members
                .get(&self.cfg.worker)
                .is_some_and(|me| ownership::eligible(me, selector));
        }
        ownership::schedules(&self.members, &self.cfg.worker, self.cfg.dispatch, name, selector)
    }

    /// Whether a run-now request for the part `name` is this worker's to claim: its owner's,
    /// even while the job is paused.
    pub(super) fn takes_run_now(&self, name: &str, selector: &BTreeMap<String, String>, fanout_all: bool) -> bool {
        if fanout_all {
            return !self.draining
                && self
                    .members
                    .get(&self.cfg.worker)
                    .is_some_and(|me| ownership::eligible(me, selector));
        }
        ownership::schedules(&self.members, &self.cfg.worker, self.cfg.dispatch, name, selector)
    }

    /// The revision of the job part as held here.
    pub(super) fn known_revision(&self, part: &str) -> Option<i64> {
        self.jobs
            .get(part)
            .map(|e| e.job.revision)
            .or_else(|| self.thin.get(part).map(|t| t.revision))
    }

    /// Drops the full spec of a part this worker does not own and has nothing of; false (and
    /// nothing changed) while it has, or before the members are known.
    pub(super) fn make_thin(&mut self, part: &str) -> bool {
        if !self.synced_members {
            return false;
        }
        let Some(e) = self.jobs.get(part) else { return false };
        if e.owned
            || !e.overdue.is_empty()
            || !e.waiting.is_empty()
            || self.active.contains_key(part)
            || self.catchup.contains_key(part)
            || self.catchup_head.contains_key(part)
            || self.taking.contains(part)
            || self.clearing.contains(part)
            || self.ticks.values().any(|t| t.job == part)
            || self.triggers.values().any(|t| t.job == part)
        {
            return false;
        }
        let e = self.jobs.remove(part).expect("present");
        let eligibility = self.eligibility_of(&e.job.spec);
        let upstreams = (!e.job.spec.after.is_empty()).then(|| {
            e.job
                .spec
                .after
                .iter()
                .map(|u| u.job.clone())
                .collect::<Box<[String]>>()
        });
        self.thin.insert(
            part.to_string(),
            Thin {
                revision: e.job.revision,
                decided_until: e.decided_until,
                eligibility,
                upstreams,
                listed: e.listed,
            },
        );
        true
    }

    /// Makes thin what can be (at the end of every step): parts that lost their owner here, or
    /// whose last leftover ended.
    pub(super) fn thin_out(&mut self) {
        if self.to_thin.is_empty() {
            return;
        }
        for part in std::mem::take(&mut self.to_thin) {
            if self.jobs.get(&part).is_some_and(|e| !e.owned) && !self.make_thin(&part) {
                self.to_thin.insert(part);
            }
        }
    }

    /// Thin parts this worker should now own: their jobs' specs are fetched.
    pub(super) fn gain_thin(&mut self, now: i64, lookback: Lookback) -> usize {
        let gained: Vec<String> = self
            .thin
            .iter()
            .filter(|(part, t)| {
                self.owns(
                    part,
                    &t.eligibility.selector,
                    t.eligibility.paused,
                    t.eligibility.fanout_all,
                )
            })
            .map(|(part, _)| crate::model::part_of(part).0.to_string())
            .collect();
        let n = gained.len();
        for job in gained {
            self.request_fetch(now, job, lookback);
        }
        n
    }

    /// Asks for the spec of `job` (once; a `Full` look-back wins over a hand-over's).
    pub(super) fn request_fetch(&mut self, now: i64, job: String, lookback: Lookback) {
        let f = self.fetching.entry(job).or_insert(Fetch {
            gained_at: now,
            lookback,
            in_flight: false,
        });
        if lookback == Lookback::Full {
            f.lookback = Lookback::Full;
        }
    }

    /// Sends the fetches asked for in this step as one request (at the end of every step).
    pub(super) fn flush_fetches(&mut self, now: i64) {
        if now < self.fetch_after {
            return;
        }
        let names: Vec<String> = self
            .fetching
            .iter_mut()
            .filter(|(_, f)| !f.in_flight)
            .map(|(name, f)| {
                f.in_flight = true;
                name.clone()
            })
            .collect();
        if !names.is_empty() {
            self.effects.push_back(Effect::FetchJobs { names });
        }
    }

    /// The specs read for `names`: each still wanted is installed whole, its ownership decided
    /// as of when it was gained.
    pub(super) fn on_fetched(
        &mut self,
        now: i64,
        names: Vec<String>,
        result: Result<Vec<(String, Option<JobRead>)>, String>,
    ) {
        let reads = match result {
            Ok(r) => r,
            Err(error) => {
                METRICS.job_fetches.with_label_values(&["failed"]).inc();
                warn!(jobs = names.len(), error = %error, "could not read the specs of jobs this worker now owns; trying again in 1s (their ticks wait)");
                for n in &names {
                    if let Some(f) = self.fetching.get_mut(n) {
                        f.in_flight = false;
                    }
                }
                self.fetch_after = now + FETCH_RETRY_MS;
                self.timers.push(self.fetch_after, Timer::FetchRetry);
                return;
            }
        };
        METRICS.job_fetches.with_label_values(&["ok"]).inc();
        let mut changed: Vec<(String, bool)> = Vec::new();
        for (name, read) in reads {
            let Some(fetch) = self.fetching.remove(&name) else {
                // a newer version came through the watch meanwhile, or the job was deleted
                continue;
            };
            match read {
                // deleted: the watch says so too
                None => {}
                Some(JobRead::Job(job))
                    if self.known_revision(self.parts_of(&name).first().map(String::as_str).unwrap_or(&name))
                        == Some(job.revision) =>
                {
                    self.install(now, *job, Some(fetch), &mut changed);
                }
                // a version the watch has not brought yet (or garbage): as if it had
                Some(read) => self.upsert_job(now, read),
            }
        }
        log_ownership_changes(&changed, self.owned_count);
        METRICS.owned_jobs.set(self.owned_count as i64);
        METRICS.job_specs_held.set(self.jobs.len() as i64);
        self.try_run_now(now);
    }

    /// The names `job` is scheduled under.
    pub(super) fn parts_of(&self, job: &str) -> Vec<String> {
        self.parts.get(job).cloned().unwrap_or_else(|| vec![job.to_string()])
    }
}

/// One debug line per job that changed hands while few did; one line with the counts when many
/// did (a worker gaining 100,000 jobs would otherwise spend seconds writing its log before it
/// claims anything).
pub(super) fn log_ownership_changes(changed: &[(String, bool)], owned: usize) {
    if changed.len() <= OWNERSHIP_LINES_AT_MOST {
        for (name, own) in changed {
            if *own {
                debug!(job = name.as_str(), "owned");
            } else {
                debug!(job = name.as_str(), "no longer owned");
            }
        }
    } else {
        let gained = changed.iter().filter(|(_, own)| *own).count();
        debug!(
            gained,
            lost = changed.len() - gained,
            owned,
            "ownership changed for many jobs"
        );
    }
}
