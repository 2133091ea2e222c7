//! Notifications: a job's runs told to webhooks, Slack and mail, by the job's rules.
//!
//! - **Queued with the record.** A master that stores finished runs of a job with rules (or
//!   `pause_after_failures`) puts each in etcd's `notify/inbox/` before it acknowledges the
//!   batch (`Notify::queue`); a master that dies between the store insert and this write never
//!   acknowledged, so the worker sends the batch again. The ledger's `missed` and `lost` records
//!   come the same way.
//! - **Decided once.** One master at a time is the notifier (`notify/leader`, under its session
//!   lease, like the tick ledger). It takes the inbox in order per job, asks `core` what each run
//!   leads to, and writes the job's streak, the new deliveries (ids derived from run, channel and
//!   event: never two of one notice) and the inbox entries' removal in one transaction.
//! - **Sent until delivered.** Pending deliveries are the outbox: sent (8 at a time, 10 s each),
//!   retried with backoff for `master.notify.retry_for`, then dead (counted, kept, visible).
//!   A new notifier resumes the outbox from etcd; a notice whose answer was lost with the old one
//!   is sent again under the same `X-Cronmesh-Delivery` id.
//! - **Paused for failures.** `pause_after_failures` pauses the job (`paused_reason`), tells its
//!   channels; resuming it starts the count again.
//!
//! `core` holds the decisions (sans I/O), `channels` the sending; this file the shell.

pub mod channels;
pub mod core;

use super::AppState;
use crate::config::NotifyConfig;
use crate::coord::{Decided, Delivery, DeliveryStatus, InboxEntry, InboxEvent, JobEvent, JobRead, Streak, now_ms};
use crate::model::{JobSpec, NotifyEvent, NotifyRule, RunRecord, StoredJob};
use crate::telemetry::metrics::METRICS;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a master that is not the notifier tries to become it.
const CAMPAIGN_EVERY: Duration = Duration::from_secs(2);
/// Deliveries being sent at once.
const MAX_IN_FLIGHT: usize = 8;
/// Delivered and dead notices are kept this long, and at most `KEEP_DELIVERIES` of them.
pub const KEEP_FOR_MS: i64 = 7 * 86_400_000;
const KEEP_DELIVERIES: usize = 10_000;
/// A decision takes no further run once it holds this many etcd operations. One run adds at
/// most 83 (20 rules: 20 notices and 20 `paused` ones, a put and a compare each, its removal
/// and its streak), so a decision stays under etcd's default 128 operations per transaction.
const OPS_PER_DECISION: usize = 30;

/// The notification settings and channels of this master, and which jobs want notices.
pub struct Notify {
    pub channels: channels::Channels,
    pub defaults: Vec<NotifyRule>,
    retry_for_ms: i64,
    enabled: bool,
    /// Jobs with rules (their own or the defaults) or `pause_after_failures`, from the job watch.
    wanted: Mutex<HashSet<String>>,
    /// This master's URL (links to runs in notices).
    base_url: OnceLock<String>,
}

impl Notify {
    pub fn from_config(c: &NotifyConfig) -> Result<Self, channels::ChannelError> {
        let channels = channels::Channels::from_config(c)?;
        for name in channels.by_name.keys() {
            for o in ["delivered", "retried", "dead"] {
                METRICS.notifications.with_label_values(&[name, o]);
            }
            METRICS.notify_dead.with_label_values(&[name]);
            METRICS.notification_latency.with_label_values(&[name]);
        }
        Ok(Notify {
            channels,
            defaults: c.default.clone(),
            retry_for_ms: c.retry_for.as_millis() as i64,
            enabled: c.enabled,
            wanted: Mutex::new(HashSet::new()),
            base_url: OnceLock::new(),
        })
    }

    pub fn set_base_url(&self, url: &str) {
        let _ = self.base_url.set(url.trim_end_matches('/').to_string());
    }

    /// The rules a job goes by: its own, or the fleet's defaults when it has none.
    pub fn rules_of<'a>(&'a self, spec: &'a JobSpec) -> &'a [NotifyRule] {
        spec.notify.as_deref().unwrap_or(&self.defaults)
    }

    pub fn wants(&self, spec: &JobSpec) -> bool {
        !self.rules_of(spec).is_empty() || spec.pause_after_failures.is_some()
    }

    /// Checks a job's rules against this master's channels: `Err((field, message))`.
    pub fn check(&self, spec: &JobSpec) -> Result<(), (String, String)> {
        check_rules(spec, &self.channels.names())
    }

    /// The job watch listed every job / saw one saved / deleted.
    /// The job watch listed every job: these want notices.
    pub fn wanted_listed(&self, wanted: HashSet<String>) {
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
    }
    pub fn job_saved(&self, j: &JobRead) {
        let mut w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        match j {
            JobRead::Job(j) if self.wants(&j.spec) => w.insert(j.spec.name.clone()),
            _ => w.remove(j.name()),
        };
    }
    pub fn job_deleted(&self, name: &str) {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Puts the finished runs of jobs that want notices in the notifier's inbox. Called after
    /// they are stored and before the batch is acknowledged; an error refuses the batch (the
    /// worker sends it again; the store keeps one copy).
    pub async fn queue(
        &self,
        coord: &crate::coord::Coord,
        records: &[RunRecord],
    ) -> Result<(), crate::coord::CoordError> {
        let entries: Vec<InboxEntry> = {
            let w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            if w.is_empty() {
                return Ok(());
            }
            let now = now_ms();
            records
                .iter()
                .filter(|r| w.contains(&r.job))
                .map(|r| InboxEntry::of(r, now))
                .collect()
        };
        if entries.is_empty() {
            return Ok(());
        }
        let out = coord.put_inbox(&entries).await;
        METRICS
            .notify_inbox_writes
            .with_label_values(&[if out.is_ok() { "ok" } else { "error" }])
            .inc_by(entries.len() as u64);
        out
    }

    /// A delivery of `event` about `run` to `channel`, with its webhook body.
    fn delivery(
        &self,
        run: &InboxEntry,
        channel: &str,
        event: NotifyEvent,
        streak: &Streak,
        reason: Option<&str>,
        now: i64,
    ) -> Delivery {
        let id = core::delivery_id(&run.run_id, channel, event);
        let url = self.base_url.get().map(|b| format!("{b}/#/runs/{}", run.run_id));
        let payload = serde_json::json!({
            "event": event.as_str(),
            "delivery_id": id,
            "channel": channel,
            "job": run.job,
            "run_id": run.run_id,
            "status": run.status.as_str(),
            "trigger": run.trigger,
            "attempt": run.attempt,
            "exit_code": run.exit_code,
            "signal": run.signal,
            "planned_at": run.planned_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "duration_ms": run.duration_ms,
            "worker": run.worker,
            "error": run.error,
            "output_tail": run.output_tail,
            "consecutive_failures": streak.consecutive_failures,
            "reason": reason,
            "url": url,
            "created_at": now,
        });
        Delivery {
            id,
            event,
            job: run.job.clone(),
            run_id: Some(run.run_id.clone()),
            channel: channel.to_string(),
            kind: self
                .channels
                .by_name
                .get(channel)
                .map_or("unknown", |c| c.config.kind.as_str())
                .to_string(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            last_error: None,
            created_at: now,
            updated_at: now,
            next_attempt_at: Some(now),
            delivered_at: None,
            run_ended_at: run.ended_at.or(Some(run.queued_at)),
            payload,
        }
    }

    /// A test message to `channel`, sent now (the API's `POST /api/v1/notify/test`).
    pub async fn send_test(&self, channel: &str, by: &str) -> Delivery {
        let now = now_ms();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let payload = serde_json::json!({
            "event": "test",
            "delivery_id": id,
            "channel": channel,
            "job": "",
            "run_id": null,
            "status": "test",
            "reason": format!("a test message sent by {by}"),
            "url": self.base_url.get(),
            "created_at": now,
        });
        let mut d = Delivery {
            id,
            event: NotifyEvent::Test,
            job: String::new(),
            run_id: None,
            channel: channel.to_string(),
            kind: self
                .channels
                .by_name
                .get(channel)
                .map_or("unknown", |c| c.config.kind.as_str())
                .to_string(),
            status: DeliveryStatus::Pending,
            attempts: 1,
            last_error: None,
            created_at: now,
            updated_at: now,
            next_attempt_at: None,
            delivered_at: None,
            run_ended_at: None,
            payload,
        };
        let out = self.channels.send(&d).await;
        let end = now_ms();
        d.updated_at = end;
        // counted like any attempt's outcome; a failed test is not a dead letter (no notice
        // of a run was lost), it is answered to the caller
        match out {
            Ok(()) => {
                d.status = DeliveryStatus::Delivered;
                d.delivered_at = Some(end);
                METRICS.notifications.with_label_values(&[channel, "delivered"]).inc();
            }
            Err(e) => {
                d.status = DeliveryStatus::Dead;
                d.last_error = Some(e);
                METRICS.notifications.with_label_values(&[channel, "dead"]).inc();
            }
        }
        d
    }
}

/// Checks a job's rules (`model::validate_notify`) and that each names one of `channels`.
pub fn check_rules(spec: &JobSpec, channels: &[&str]) -> Result<(), (String, String)> {
    crate::model::validate_notify(spec)?;
    for (i, r) in spec.notify.iter().flatten().enumerate() {
        if !channels.contains(&r.channel.as_str()) {
            let known = if channels.is_empty() {
                "none are configured: add [[master.notify.channels]] to the masters' config".to_string()
            } else {
                format!("configured: {}", channels.join(", "))
            };
            return Err((
                format!("notify[{i}].channel"),
                format!(
                    "unknown channel {:?} ({known})",
                    r.channel.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

/// Takes part in the notifier's election until `stop`; decides and sends while elected.
pub async fn run(st: Arc<AppState>, lease: watch::Receiver<Option<i64>>, stop: CancellationToken) {
    METRICS.notify_keeper.set(0);
    if !st.notify.enabled {
        return;
    }
    super::election::serve(
        &st,
        super::election::Role::Notifier,
        lease,
        &stop,
        |lease_id, mut lease| {
            let (st, stop) = (st.clone(), stop.clone());
            async move { keep(&st, lease_id, &mut lease, &stop).await }
        },
    )
    .await;
}

/// What the notifier holds while it is one.
struct Books {
    jobs: HashMap<String, StoredJob>,
    streaks: HashMap<String, Streak>,
    inbox: BTreeMap<String, InboxEntry>,
    /// Pending deliveries by id.
    outbox: HashMap<String, Delivery>,
    in_flight: HashSet<String>,
    /// Every delivery known: id → (created_at, terminal).
    known: HashMap<String, (i64, bool)>,
    /// After a failed write, decisions wait until then.
    decide_after: i64,
    backoff_ms: i64,
    /// Channels whose last attempt failed: one log line when one starts failing, one a minute
    /// while it goes on, one when it takes notices again (not one per notice).
    failing: HashMap<String, Trouble>,
}

struct Trouble {
    since: i64,
    failed_attempts: u64,
    logged_at: i64,
}

/// A failing channel's summary line comes at most this often.
const TROUBLE_LOG_EVERY_MS: i64 = 60_000;

async fn keep(st: &Arc<AppState>, lease_id: i64, lease: &mut watch::Receiver<Option<i64>>, stop: &CancellationToken) {
    let me = st.config.master.id.clone();
    let loaded = async {
        let streaks = st.coord.notify_streaks().await?;
        let deliveries = st.coord.deliveries().await?;
        Ok::<_, crate::coord::CoordError>((streaks, deliveries))
    }
    .await;
    let (streaks, deliveries) = match loaded {
        Ok(x) => x,
        Err(e) => {
            crate::warn_unless_etcd_down!(error = %e, "the notifier cannot read its state; trying again");
            let _ = st.coord.resign_notifier(&me).await;
            tokio::time::sleep(CAMPAIGN_EVERY).await;
            return;
        }
    };
    let mut b = Books {
        jobs: HashMap::new(),
        streaks: streaks.into_iter().collect(),
        inbox: BTreeMap::new(),
        outbox: HashMap::new(),
        in_flight: HashSet::new(),
        known: HashMap::new(),
        decide_after: 0,
        backoff_ms: 100,
        failing: HashMap::new(),
    };
    for d in deliveries {
        b.known
            .insert(d.id.clone(), (d.created_at, d.status != DeliveryStatus::Pending));
        if d.status == DeliveryStatus::Pending {
            b.outbox.insert(d.id.clone(), d);
        }
    }
    METRICS.notify_keeper.set(1);
    info!(
        master = %me,
        pending = b.outbox.len(),
        "this master sends notifications: it decides every finished run of jobs with rules from here"
    );
    let watches = stop.child_token();
    let mut jobs = st.coord.watch_jobs_paged_as("notify", watches.clone());
    let mut listing: (i64, HashMap<String, StoredJob>) = (0, HashMap::new());
    let mut inbox = st.coord.watch_inbox(watches.clone());
    let mut sending: JoinSet<(Delivery, Result<(), String>)> = JoinSet::new();
    let mut jobs_synced = false;
    let mut last_trim = now_ms();
    let why = loop {
        let now = now_ms();
        if jobs_synced {
            if let Err(why) = settle(st, &me, &mut b, now).await {
                break why;
            }
            start_sends(st, &mut b, &mut sending, now);
            if now - last_trim > 60_000 {
                last_trim = now;
                trim(st, &mut b, now).await;
            }
        }
        METRICS.notify_outbox.set(b.outbox.len() as i64);
        METRICS.notify_inbox.set(b.inbox.len() as i64);
        let next = next_wake(&b, now);
        tokio::select! {
            _ = stop.cancelled() => break "the master is stopping",
            changed = lease.changed() => {
                if changed.is_err() || *lease.borrow_and_update() != Some(lease_id) {
                    break "its session lease changed";
                }
            }
            Some(ev) = jobs.events.recv() => {
                match ev {
                    // the list comes in pages; the last (the `Reset`) completes it. Only jobs
                    // with rules or a pause after failures are kept (the inbox holds no other
                    // job's runs): at a million jobs the notifier holds a few
                    JobEvent::Listed { jobs: page, revision } => listing_page(st, &mut listing, page, revision),
                    JobEvent::Reset { jobs: page, revision } => {
                        listing_page(st, &mut listing, page, revision);
                        jobs_synced = true;
                        b.jobs = std::mem::take(&mut listing.1);
                        let names: Vec<String> = b.jobs.keys().cloned().collect();
                        for n in names { job_changed(st, &me, &mut b, &n).await; }
                    }
                    JobEvent::Saved(JobRead::Job(j)) if st.notify.wants(&j.spec) => {
                        let name = j.spec.name.clone();
                        b.jobs.insert(name.clone(), *j);
                        job_changed(st, &me, &mut b, &name).await;
                    }
                    // no rules now: its runs are no longer queued, and those queued are taken
                    // with nothing to tell
                    JobEvent::Saved(JobRead::Job(j)) => { b.jobs.remove(&j.spec.name); }
                    JobEvent::Saved(JobRead::Bad { name, .. }) => { b.jobs.remove(&name); }
                    JobEvent::Deleted { name, .. } => {
                        b.jobs.remove(&name);
                        // a job made again under this name starts with no failures
                        if b.streaks.contains_key(&name) && st.coord.put_streak(&me, &name, None).await.is_ok() {
                            b.streaks.remove(&name);
                        }
                    }
                }
            }
            Some(ev) = inbox.events.recv() => match ev {
                InboxEvent::Reset(all) => { b.inbox = all.into_iter().map(|e| (e.key(), e)).collect(); }
                InboxEvent::Put(e) => { b.inbox.insert(e.key(), e); }
            },
            Some(done) = sending.join_next(), if !sending.is_empty() => {
                if let Ok((d, out)) = done
                    && let Err(why) = attempted(st, &me, &mut b, d, out).await
                {
                    break why;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(next.saturating_sub(now).clamp(0, 5000) as u64)) => {}
        }
    };
    watches.cancel();
    sending.abort_all();
    let _ = tokio::join!(jobs.task, inbox.task);
    METRICS.notify_keeper.set(0);
    METRICS.notify_outbox.set(0);
    METRICS.notify_inbox.set(0);
    info!(master = %me, detail = why, "this master no longer sends notifications");
}

/// The earliest time something is due: a pending delivery, a decision after a failed write.
fn next_wake(b: &Books, now: i64) -> i64 {
    let mut next = now + 5000;
    if !b.inbox.is_empty() {
        next = next.min(b.decide_after.max(now));
    }
    if b.in_flight.len() >= MAX_IN_FLIGHT {
        return next; // an attempt ending wakes the loop
    }
    // a notice held back by one of its job and channel in flight waits for that one's end
    let busy: HashSet<(&str, &str)> = b
        .in_flight
        .iter()
        .filter_map(|id| b.outbox.get(id))
        .map(|d| (d.job.as_str(), d.channel.as_str()))
        .collect();
    for d in b.outbox.values() {
        if !b.in_flight.contains(&d.id) && !busy.contains(&(d.job.as_str(), d.channel.as_str())) {
            next = next.min(d.next_attempt_at.unwrap_or(now));
        }
    }
    next
}

/// A job was saved (or listed): a resume after the master paused it ends its streak.
/// One page of the job list at `revision` (a page at another revision starts a new list).
fn listing_page(st: &AppState, listing: &mut (i64, HashMap<String, StoredJob>), page: Vec<JobRead>, revision: i64) {
    if listing.0 != revision {
        *listing = (revision, HashMap::new());
    }
    for j in page {
        if let JobRead::Job(j) = j
            && st.notify.wants(&j.spec)
        {
            listing.1.insert(j.spec.name.clone(), *j);
        }
    }
}

async fn job_changed(st: &Arc<AppState>, me: &str, b: &mut Books, name: &str) {
    let Some(job) = b.jobs.get(name) else { return };
    let Some(s) = b.streaks.get_mut(name) else { return };
    if job.spec.paused || s.pause_pending {
        return;
    }
    let mut next = s.clone();
    if core::resumed(&mut next) {
        match st.coord.put_streak(me, name, Some(&next)).await {
            Ok(_) => {
                info!(
                    job = name,
                    "job resumed after it was paused for its failures: its failures are counted from 0 again"
                );
                *s = next;
            }
            Err(e) => {
                crate::warn_unless_etcd_down!(error = %e, job = name, "cannot reset the job's failure count; tried again at its next change")
            }
        }
    }
}

/// Decides what the inbox holds (in order per job), writes pauses not written yet.
async fn settle(st: &Arc<AppState>, me: &str, b: &mut Books, now: i64) -> Result<(), &'static str> {
    while !b.inbox.is_empty() && b.decide_after <= now {
        let mut d = Decided::default();
        let mut streaks: HashMap<String, Streak> = HashMap::new();
        let mut pauses: Vec<(String, String)> = Vec::new();
        let mut ops = 0;
        for (_, e) in b.inbox.iter() {
            if ops >= OPS_PER_DECISION {
                break;
            }
            let Some(job) = b.jobs.get(&e.job) else {
                // deleted: nothing to tell, no streak to keep
                d.taken.push(e.clone());
                ops += 1;
                continue;
            };
            let streak = streaks
                .entry(e.job.clone())
                .or_insert_with(|| b.streaks.get(&e.job).cloned().unwrap_or_default());
            let (rules, pause_after, paused, retries) = (
                st.notify.rules_of(&job.spec).to_vec(),
                job.spec.pause_after_failures,
                job.spec.paused,
                job.spec.retries,
            );
            let decision = core::decide(streak, &rules, pause_after, paused, retries, e);
            let reason = decision.pause.then(|| streak.pause_reason.clone().unwrap_or_default());
            if let Some(r) = &reason {
                pauses.push((e.job.clone(), r.clone()));
            }
            for (channel, event) in decision.notices {
                let reason = (event == NotifyEvent::Paused).then_some(reason.as_deref()).flatten();
                d.deliveries
                    .push(st.notify.delivery(e, &channel, event, streak, reason, now));
                ops += 2;
            }
            d.taken.push(e.clone());
            ops += 2;
        }
        d.streaks = streaks.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match st.coord.write_decision(me, &d).await {
            Ok(true) => {
                b.backoff_ms = 100;
                for e in &d.taken {
                    b.inbox.remove(&e.key());
                }
                b.streaks.extend(streaks);
                for x in d.deliveries {
                    if b.known.contains_key(&x.id) {
                        continue;
                    }
                    b.known.insert(x.id.clone(), (x.created_at, false));
                    info!(job = %x.job, event = x.event.as_str(), channel = %x.channel, delivery = %x.id, "notice queued");
                    b.outbox.insert(x.id.clone(), x);
                }
                for (job, reason) in pauses {
                    warn!(job = %job, reason = %reason, "job paused for its failures (pause_after_failures); resume it when it is fixed");
                }
            }
            Ok(false) => return Err("another master is the notifier"),
            Err(e) => {
                crate::warn_unless_etcd_down!(error = %e, "cannot write the notifier's decision; trying again");
                b.decide_after = now + b.backoff_ms;
                b.backoff_ms = (b.backoff_ms * 2).min(5000);
                break;
            }
        }
    }
    // pauses decided and not written yet (also those a previous notifier left)
    let pending: Vec<String> = b
        .streaks
        .iter()
        .filter(|(_, s)| s.pause_pending)
        .map(|(j, _)| j.clone())
        .collect();
    for job in pending {
        let Some(s) = b.streaks.get(&job).cloned() else {
            continue;
        };
        let revision = b.jobs.get(&job).map_or(0, |j| j.revision);
        let reason = s
            .pause_reason
            .clone()
            .unwrap_or_else(|| format!("paused after {} consecutive failures", s.consecutive_failures));
        let paused = match b.jobs.get(&job) {
            None => Ok(None),
            Some(j) if j.spec.paused => Ok(None),
            Some(_) => st.coord.pause_job_for(&job, revision, &reason).await,
        };
        match paused {
            // written, or no longer needed (deleted, changed since, paused by hand)
            Ok(_) => {
                let mut next = s.clone();
                next.pause_pending = false;
                next.pause_reason = None;
                match st.coord.put_streak(me, &job, Some(&next)).await {
                    Ok(true) => {
                        b.streaks.insert(job, next);
                    }
                    Ok(false) => return Err("another master is the notifier"),
                    Err(e) => {
                        crate::warn_unless_etcd_down!(error = %e, job = %job, "cannot store that the job was paused; trying again")
                    }
                }
            }
            Err(e) => {
                crate::warn_unless_etcd_down!(error = %e, job = %job, "cannot pause the job for its failures; trying again")
            }
        }
    }
    Ok(())
}

/// Starts sending the deliveries that are due, up to `MAX_IN_FLIGHT` at once.
fn start_sends(st: &Arc<AppState>, b: &mut Books, sending: &mut JoinSet<(Delivery, Result<(), String>)>, now: i64) {
    if b.in_flight.len() >= MAX_IN_FLIGHT {
        return;
    }
    // One attempt at a time per job and channel, oldest notice first: a receiver that answers
    // gets a job's notices in the order they were decided (a failure before the pause it led
    // to, a pause before the recovery after it).
    let mut busy: HashSet<(&str, &str)> = b
        .in_flight
        .iter()
        .filter_map(|id| b.outbox.get(id))
        .map(|d| (d.job.as_str(), d.channel.as_str()))
        .collect();
    let mut pending: Vec<&Delivery> = b.outbox.values().filter(|d| !b.in_flight.contains(&d.id)).collect();
    pending.sort_by_key(|d| (d.created_at, d.event == NotifyEvent::Paused, d.next_attempt_at));
    let room = MAX_IN_FLIGHT - b.in_flight.len();
    let mut start: Vec<Delivery> = Vec::new();
    for d in pending {
        if start.len() >= room {
            break;
        }
        // an older notice of the job to the channel waiting for its retry does not hold back
        // a newer one (the receiver may reject that one notice only)
        let first_try_pending = d.attempts == 0;
        if !busy.insert((d.job.as_str(), d.channel.as_str())) {
            continue;
        }
        if d.next_attempt_at.unwrap_or(0) <= now {
            start.push(d.clone());
        } else if !first_try_pending {
            busy.remove(&(d.job.as_str(), d.channel.as_str()));
        }
    }
    for d in start {
        b.in_flight.insert(d.id.clone());
        let st = st.clone();
        sending.spawn(async move {
            let out = st.notify.channels.send(&d).await;
            (d, out)
        });
    }
}

/// One attempt ended: the delivery is delivered, retried later, or dead.
async fn attempted(
    st: &Arc<AppState>,
    me: &str,
    b: &mut Books,
    mut d: Delivery,
    out: Result<(), String>,
) -> Result<(), &'static str> {
    b.in_flight.remove(&d.id);
    let now = now_ms();
    d.attempts += 1;
    d.updated_at = now;
    let channel = d.channel.clone();
    let m = &*METRICS;
    match &out {
        Ok(()) => {
            d.status = DeliveryStatus::Delivered;
            d.delivered_at = Some(now);
            d.next_attempt_at = None;
            d.last_error = None;
            m.notifications.with_label_values(&[&channel, "delivered"]).inc();
            if let Some(end) = d.run_ended_at {
                m.notification_latency
                    .with_label_values(&[&channel])
                    .observe(((now - end).max(0)) as f64 / 1000.0);
            }
            info!(job = %d.job, event = d.event.as_str(), channel = %channel, attempts = d.attempts, "notice delivered");
            if let Some(t) = b.failing.remove(&channel) {
                info!(channel = %channel, failed_attempts = t.failed_attempts, down_for_ms = now - t.since, "channel takes notices again; the waiting ones are sent");
            }
        }
        Err(e) => {
            d.last_error = Some(e.clone());
            match core::next_attempt(d.attempts, now, d.created_at, st.notify.retry_for_ms) {
                Some(at) => {
                    d.next_attempt_at = Some(at);
                    m.notifications.with_label_values(&[&channel, "retried"]).inc();
                    let waiting = b.outbox.values().filter(|o| o.channel == channel).count();
                    match b.failing.get_mut(&channel) {
                        None => {
                            b.failing.insert(
                                channel.clone(),
                                Trouble {
                                    since: now,
                                    failed_attempts: 1,
                                    logged_at: now,
                                },
                            );
                            warn!(channel = %channel, error = %e, waiting, "channel does not take notices; each is retried with backoff (1 s doubling to 5 min) for master.notify.retry_for");
                        }
                        Some(t) => {
                            t.failed_attempts += 1;
                            if now - t.logged_at >= TROUBLE_LOG_EVERY_MS {
                                t.logged_at = now;
                                warn!(channel = %channel, error = %e, waiting, failed_attempts = t.failed_attempts, down_for_ms = now - t.since, "channel still does not take notices");
                            }
                        }
                    }
                }
                None => {
                    d.status = DeliveryStatus::Dead;
                    d.next_attempt_at = None;
                    m.notifications.with_label_values(&[&channel, "dead"]).inc();
                    m.notify_dead.with_label_values(&[&channel]).inc();
                    warn!(job = %d.job, event = d.event.as_str(), channel = %channel, attempts = d.attempts, error = %e, "notice given up after master.notify.retry_for: counted as a dead letter (see GET /api/v1/notifications?status=dead)");
                }
            }
        }
    }
    match st.coord.update_delivery(me, &d).await {
        Ok(true) => {}
        Ok(false) => return Err("another master is the notifier"),
        // the attempt is not lost: the outbox keeps the new state and writes it at the next one
        Err(e) => crate::warn_unless_etcd_down!(error = %e, delivery = %d.id, "cannot store a notice's attempt"),
    }
    let terminal = d.status != DeliveryStatus::Pending;
    b.known.insert(d.id.clone(), (d.created_at, terminal));
    if terminal {
        b.outbox.remove(&d.id);
    } else {
        b.outbox.insert(d.id.clone(), d);
    }
    Ok(())
}

/// Deletes delivered and dead notices older than `KEEP_FOR_MS`, and the oldest beyond
/// `KEEP_DELIVERIES`.
async fn trim(st: &Arc<AppState>, b: &mut Books, now: i64) {
    let mut done: Vec<(i64, String)> = b
        .known
        .iter()
        .filter(|(_, (_, terminal))| *terminal)
        .map(|(id, (at, _))| (*at, id.clone()))
        .collect();
    done.sort();
    let over = b.known.len().saturating_sub(KEEP_DELIVERIES);
    let gone: Vec<String> = done
        .iter()
        .enumerate()
        .filter(|(i, (at, _))| *i < over || *at < now - KEEP_FOR_MS)
        .map(|(_, (_, id))| id.clone())
        .collect();
    if gone.is_empty() {
        return;
    }
    match st.coord.delete_deliveries(&gone).await {
        Ok(()) => {
            for id in &gone {
                b.known.remove(id);
            }
        }
        Err(e) => crate::warn_unless_etcd_down!(error = %e, "cannot delete old notices; trying again in a minute"),
    }
}

/// Deliveries for the API, newest first, without their bodies.
pub fn for_api(
    mut all: Vec<Delivery>,
    job: Option<&str>,
    channel: Option<&str>,
    status: Option<DeliveryStatus>,
    limit: usize,
) -> Vec<Delivery> {
    all.retain(|d| {
        job.is_none_or(|j| d.job == j) && channel.is_none_or(|c| d.channel == c) && status.is_none_or(|s| d.status == s)
    });
    all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    all.truncate(limit);
    for d in &mut all {
        d.payload = serde_json::Value::Null;
    }
    all
}
