//! The jobs store: `jobs/{name}` keys holding `StoredJob` JSON.

use super::{Coord, CoordError, encode, now_ms, prefix_end};
use crate::model::{JobSpec, StoredJob, validate_name};
use crate::telemetry::events::BadValueSkipped;
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

/// What `jobs/{name}` holds.
enum Stored {
    Absent,
    Job(Box<StoredJob>),
    /// Not a readable job named `name` (garbage, or a job whose `name` differs from its key),
    /// at this mod revision.
    Unreadable {
        revision: i64,
        message: String,
    },
}

/// Decodes the value of `jobs/{name}`; the job inside must carry the key's name.
fn decode_job(name: &str, value: &[u8], revision: i64) -> Result<StoredJob, String> {
    let mut job: StoredJob = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if job.spec.name != name {
        return Err(format!("its name field {:?} differs from its key", job.spec.name));
    }
    job.revision = revision;
    Ok(job)
}

/// What `put_job_guarded` compares besides the job itself.
#[derive(Debug, Clone)]
pub enum JobsGuard {
    /// These jobs still have these mod revisions (a job's upstreams and their ancestors).
    Unchanged(Vec<(String, i64)>),
    /// No job changed after this revision (for more jobs than a transaction compares).
    NoneChangedAfter(i64),
}

/// `updated_by` of a pause the master made for a job's failures (`pause_job_for`).
pub const NOTIFIER: &str = "notifier";

impl Coord {
    /// This process signs every job it stores from now on (masters).
    pub fn with_signer(mut self, signer: std::sync::Arc<crate::signing::Signer>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Whether `job` is signed as this process would sign it now (always, when it signs
    /// nothing): a write of the same spec may then be skipped; otherwise it signs the job.
    pub fn signed_as_mine(&self, job: &StoredJob) -> bool {
        match &self.signer {
            None => true,
            Some(_) => job.signature == self.sign(&job.spec),
        }
    }

    /// The signature of `spec` by this process' key, if it has one.
    fn sign(&self, spec: &JobSpec) -> Option<crate::model::JobSignature> {
        self.signer.as_ref().map(|s| s.sign(self.cluster_prefix(), spec))
    }

    /// Creates or replaces a job after validating it. Keeps `created_at` of an existing job;
    /// optimistic concurrency (compare on the mod revision read) so two writers cannot interleave.
    pub async fn put_job(&self, spec: JobSpec) -> Result<StoredJob, CoordError> {
        self.put_job_guarded(spec, None, None).await
    }

    /// `put_job`, recording who wrote it (`updated_by`: an API token's name).
    pub async fn put_job_by(&self, spec: JobSpec, by: Option<&str>) -> Result<StoredJob, CoordError> {
        self.put_job_guarded(spec, None, by).await
    }

    /// `put_job`, written only if the jobs its dependencies were checked against are as they
    /// were (two writes cannot close a cycle together). `JobsChanged` when one changed: read
    /// them again and check again. `by`: who writes it (`updated_by`).
    pub async fn put_job_guarded(
        &self,
        spec: JobSpec,
        guard: Option<&JobsGuard>,
        by: Option<&str>,
    ) -> Result<StoredJob, CoordError> {
        spec.validate()?;
        crate::model::validate_new_name(&spec.name)?;
        for _ in 0..5 {
            // an unreadable value is replaced (its creation time is lost with it)
            let existing = self.read_job(&spec.name).await?;
            let now = now_ms();
            // a job that stays paused keeps when (and why) it was paused; resuming forgets both
            let (paused_at, paused_reason) = match (&existing, spec.paused) {
                (Stored::Job(j), true) if j.spec.paused => (j.paused_at.or(Some(now)), j.paused_reason.clone()),
                (_, true) => (Some(now), None),
                _ => (None, None),
            };
            let (created_at, cmp) = match &existing {
                Stored::Job(j) => (
                    j.created_at,
                    Compare::mod_revision(self.keys.job(&spec.name), CompareOp::Equal, j.revision),
                ),
                Stored::Unreadable { revision, .. } => (
                    now,
                    Compare::mod_revision(self.keys.job(&spec.name), CompareOp::Equal, *revision),
                ),
                Stored::Absent => (
                    now,
                    Compare::create_revision(self.keys.job(&spec.name), CompareOp::Equal, 0),
                ),
            };
            let mut stored = StoredJob {
                spec: spec.clone(),
                created_at,
                updated_at: now,
                revision: 0,
                paused_reason,
                paused_at,
                updated_by: by.map(str::to_string),
                signature: self.sign(&spec),
            };
            let key = self.keys.job(&spec.name);
            let value = encode(&stored);
            let mut cmps = vec![cmp];
            match guard {
                None => {}
                Some(JobsGuard::Unchanged(jobs)) => cmps.extend(
                    jobs.iter()
                        .map(|(name, rev)| Compare::mod_revision(self.keys.job(name), CompareOp::Equal, *rev)),
                ),
                Some(JobsGuard::NoneChangedAfter(r)) => {
                    let prefix = self.keys.jobs();
                    cmps.push(
                        Compare::mod_revision(prefix.clone(), CompareOp::Less, r + 1)
                            .with_range(prefix_end(prefix.as_bytes())),
                    );
                }
            }
            let txn = Txn::new().when(cmps).and_then([TxnOp::put(key, value, None)]);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            if resp.succeeded() {
                stored.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(stored);
            }
            if guard.is_some() {
                return Err(CoordError::JobsChanged);
            }
        }
        Err(CoordError::Conflict(format!(
            "job {:?} kept changing while it was being saved; try again",
            spec.name
        )))
    }

    /// Creates jobs that must not exist yet, up to 100 per etcd transaction (etcd's default
    /// `--max-txn-ops` is 128). All are validated before anything is written. A chunk that meets
    /// an existing name writes nothing and returns `Conflict`; earlier chunks stay written.
    /// For bulk loads (the load test's 100,000 jobs); `put_job` is the one-job path.
    pub async fn create_jobs(&self, specs: &[JobSpec]) -> Result<usize, CoordError> {
        for spec in specs {
            spec.validate()?;
            crate::model::validate_new_name(&spec.name)?;
        }
        let mut created = 0;
        for chunk in specs.chunks(100) {
            let now = now_ms();
            let mut cmps = Vec::with_capacity(chunk.len());
            let mut puts = Vec::with_capacity(chunk.len());
            for spec in chunk {
                let key = self.keys.job(&spec.name);
                cmps.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                let stored = StoredJob {
                    spec: spec.clone(),
                    created_at: now,
                    updated_at: now,
                    revision: 0,
                    paused_reason: None,
                    paused_at: None,
                    updated_by: None,
                    signature: self.sign(spec),
                };
                puts.push(TxnOp::put(key, encode(&stored), None));
            }
            let txn = Txn::new().when(cmps).and_then(puts);
            let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
            if !resp.succeeded() {
                return Err(CoordError::Conflict(format!(
                    "one of the jobs {:?}..{:?} already exists; nothing in that batch was written (use put_job to replace)",
                    chunk[0].name,
                    chunk[chunk.len() - 1].name
                )));
            }
            created += chunk.len();
        }
        Ok(created)
    }

    /// Reads one job. A value that is not this job (garbage written into etcd, or a job whose
    /// `name` differs from its key) is `Unreadable`: never served under another name.
    pub async fn get_job(&self, name: &str) -> Result<Option<StoredJob>, CoordError> {
        match self.read_job(name).await? {
            Stored::Absent => Ok(None),
            Stored::Job(j) => Ok(Some(*j)),
            Stored::Unreadable { message, .. } => Err(CoordError::Unreadable {
                name: name.to_string(),
                message,
            }),
        }
    }

    async fn read_job(&self, name: &str) -> Result<Stored, CoordError> {
        validate_name(name)?;
        let key = self.keys.job(name);
        let resp = self.call("get", |mut c| async move { c.get(key, None).await }).await?;
        Ok(match resp.kvs().first() {
            None => Stored::Absent,
            Some(kv) => match decode_job(name, kv.value(), kv.mod_revision()) {
                Ok(j) => Stored::Job(Box::new(j)),
                Err(message) => Stored::Unreadable {
                    revision: kv.mod_revision(),
                    message,
                },
            },
        })
    }

    /// Lists every job and the revision of the read. Entries that are not readable jobs are
    /// skipped (logged and counted), so one bad key does not hide the rest.
    pub async fn list_jobs(&self) -> Result<(Vec<StoredJob>, i64), CoordError> {
        let (kvs, rev) = self.get_prefix_snapshot(&self.keys.jobs()).await?;
        Ok((self.decode_jobs(&kvs), rev))
    }

    /// Every job, a page (at most 1,000 jobs) at a time, all pages at one revision; `page` sees
    /// each page in name order. Returns the revision read. What a caller keeps of a page is all
    /// it holds: a million jobs are never decoded at once.
    pub async fn for_each_jobs_page(&self, mut page: impl FnMut(Vec<StoredJob>)) -> Result<i64, CoordError> {
        let mut pager = super::pager::Pager::new(self.keys.jobs().as_bytes(), 0);
        while let Some(kvs) = self.next_page(&mut pager).await? {
            page(self.decode_jobs(&kvs));
        }
        Ok(pager.revision())
    }

    /// One range of jobs in name order: names after `after` (exclusive) that start with
    /// `name_prefix`, at most `limit`, read at `revision` (0: now). Returns the jobs, whether more
    /// keys follow in the range, and the revision read. Pages of the jobs list cost O(page),
    /// not O(all jobs).
    pub async fn list_jobs_range(
        &self,
        after: Option<&str>,
        name_prefix: Option<&str>,
        limit: usize,
        revision: i64,
    ) -> Result<(Vec<StoredJob>, bool, i64), CoordError> {
        let base = format!("{}{}", self.keys.jobs(), name_prefix.unwrap_or(""));
        let end = prefix_end(base.as_bytes());
        let start: Vec<u8> = match after {
            // the smallest key after `jobs/{after}`
            Some(a) if format!("{}{a}", self.keys.jobs()) >= base => {
                let mut k = format!("{}{a}", self.keys.jobs()).into_bytes();
                k.push(0);
                k
            }
            _ => base.clone().into_bytes(),
        };
        let mut opts = GetOptions::new().with_range(end).with_limit(limit as i64);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = self
            .call("get", |mut c| async move { c.get(start, Some(opts)).await })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let jobs = self.decode_jobs(resp.kvs());
        Ok((jobs, resp.more(), rev))
    }

    /// Deletes a job. `NotFound` if there was none.
    pub async fn delete_job(&self, name: &str) -> Result<(), CoordError> {
        validate_name(name)?;
        let key = self.keys.job(name);
        let resp = self
            .call("delete", |mut c| async move { c.delete(key, None).await })
            .await?;
        if resp.deleted() == 0 {
            return Err(CoordError::NotFound(name.to_string()));
        }
        Ok(())
    }

    /// Pauses or resumes a job (a normal update: resuming starts from now, with no backlog).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<StoredJob, CoordError> {
        self.set_paused_by(name, paused, None).await
    }

    /// `set_paused`, recording who asks (`updated_by`).
    pub async fn set_paused_by(&self, name: &str, paused: bool, by: Option<&str>) -> Result<StoredJob, CoordError> {
        let job = self
            .get_job(name)
            .await?
            .ok_or_else(|| CoordError::NotFound(name.to_string()))?;
        let mut spec = job.spec;
        spec.paused = paused;
        self.put_job_by(spec, by).await
    }

    /// Pauses a job for a reason of the master's (`pause_after_failures`), unless its revision
    /// moved past `seen_revision` (someone changed it since; their word stands). `Ok(None)`:
    /// the job is gone or was changed.
    pub async fn pause_job_for(
        &self,
        name: &str,
        seen_revision: i64,
        reason: &str,
    ) -> Result<Option<StoredJob>, CoordError> {
        let Some(job) = self.get_job(name).await? else {
            return Ok(None);
        };
        if job.revision > seen_revision && seen_revision > 0 {
            return Ok(None);
        }
        let now = now_ms();
        let mut stored = StoredJob {
            updated_at: now,
            paused_at: Some(now),
            paused_reason: Some(reason.to_string()),
            updated_by: Some(NOTIFIER.to_string()),
            ..job.clone()
        };
        stored.spec.paused = true;
        stored.signature = self.sign(&stored.spec);
        let key = self.keys.job(name);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, job.revision)])
            .and_then([TxnOp::put(key, encode(&stored), None)]);
        let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        stored.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(stored))
    }
}

/// What `resign_jobs` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resigned {
    /// Jobs signed by another trusted key, now signed by this process' key.
    pub resigned: usize,
    /// Jobs with no signature the given keys trust (left as they are).
    pub untrusted: usize,
}

impl Coord {
    /// Signs again, with this process' key, every job whose signature verifies against
    /// `trusted` but is by another key (a key rotation). A job whose signature no trusted key
    /// verifies is never signed: that would launder a job written straight into etcd.
    pub async fn resign_jobs(&self, trusted: &crate::signing::Verifier) -> Result<Resigned, CoordError> {
        let mut out = Resigned::default();
        let Some(signer) = self.signer.clone() else {
            return Ok(out);
        };
        let (jobs, _) = self.list_jobs().await?;
        for job in jobs {
            match trusted.verify(self.cluster_prefix(), &job.spec, job.signature.as_ref()) {
                Err(_) => out.untrusted += 1,
                Ok(()) if job.signature.as_ref().is_some_and(|s| s.key == signer.id()) => {}
                Ok(()) => {
                    let mut stored = job.clone();
                    stored.signature = Some(signer.sign(self.cluster_prefix(), &stored.spec));
                    let key = self.keys.job(&stored.spec.name);
                    let txn = Txn::new()
                        .when([Compare::mod_revision(key.clone(), CompareOp::Equal, job.revision)])
                        .and_then([TxnOp::put(key, encode(&stored), None)]);
                    let resp = self.call("txn", |mut c| async move { c.txn(txn).await }).await?;
                    // a job changed meanwhile was written (and signed) by someone else
                    if resp.succeeded() {
                        out.resigned += 1;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The jobs among `kvs`; a value that is not the job its key names is logged, counted
    /// (`cronmesh_bad_values_total{watch="jobs"}`) and skipped, so one bad key does not hide the
    /// rest.
    fn decode_jobs(&self, kvs: &[etcd_client::KeyValue]) -> Vec<StoredJob> {
        let prefix = self.keys.jobs();
        let mut jobs = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key()).to_string();
            let name = key.strip_prefix(&prefix).unwrap_or(&key);
            match decode_job(name, kv.value(), kv.mod_revision()) {
                Ok(j) => jobs.push(j),
                Err(error) => BadValueSkipped {
                    watch: "jobs",
                    prefix: "",
                    key: &key,
                    error: &error,
                }
                .emit(),
            }
        }
        jobs
    }
}
