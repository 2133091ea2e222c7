//! What goes into the scheduler core (`Input`) and what comes out (`Effect`). The core never
//! performs I/O; the shell (`scheduler::run`) turns effects into etcd requests, processes and
//! reports, and turns their outcomes into inputs.

use super::tick::ClaimTimes;
use crate::coord::{
    BufferEvent, BufferedTick, ClaimOutcome, ClaimRequest, ClaimValue, JobEvent, JobRead, MemberEvent, RunningEvent,
    SignalEvent,
};
use crate::model::{KillSignal, RunRecord, RunStarted, StoredJob};
use crate::worker::executor::ExecResult;
use std::sync::Arc;
use std::time::Duration;

/// An event the core reacts to. Times are Unix ms, read by the shell from its `Clock`.
#[derive(Debug)]
pub enum Input {
    Jobs(JobEvent),
    Members(MemberEvent),
    Signals(SignalEvent),
    /// Running marks, cluster-wide.
    RunState(RunningEvent),
    /// Tick buffers, cluster-wide.
    Buffers(BufferEvent),
    /// The answer to `Effect::Buffer`: `Ok(false)` when the buffer was full.
    Buffered {
        run_id: String,
        result: Result<bool, String>,
    },
    /// The answer to `Effect::TakeBuffered`: `Ok(false)` when a run was marked or the buffer
    /// changed meanwhile.
    Took {
        job: String,
        run_id: String,
        result: Result<bool, String>,
    },
    /// The answer to `Effect::ClearBuffer`: `Ok(false)` when the buffer changed meanwhile.
    BufferCleared {
        job: String,
        ticks: Vec<BufferedTick>,
        result: Result<bool, String>,
    },
    /// The worker's session lease (None while it is not registered).
    Session(Option<i64>),
    /// The answer to `Effect::Claim { batch }`, one outcome per request, in order.
    Claimed {
        batch: u64,
        outcomes: Vec<ClaimOutcome>,
        latency: Duration,
    },
    /// The answer to `Effect::Mark`: `Ok(false)` when another run holds the job.
    Marked {
        run_id: String,
        result: Result<bool, String>,
    },
    /// The answer to `Effect::Spawn`: the process started (`error` is None) or could not be.
    Spawned {
        run_id: String,
        at: i64,
        trace_id: String,
        error: Option<String>,
    },
    /// A started process ended and was reaped.
    Exited {
        run_id: String,
        at: i64,
        result: ExecResult,
    },
    /// The answer to `Effect::FetchJobs`: each job asked for as etcd holds it now (None: it is
    /// gone), or why none could be read.
    Fetched {
        names: Vec<String>,
        result: Result<Vec<(String, Option<JobRead>)>, String>,
    },
    /// SIGTERM: stop taking ticks, let what was won finish, then stop.
    Drain,
    /// How far this worker's clock is ahead of the masters' (ms; negative: behind), as just
    /// measured; None when no master could be asked.
    ClockOffset {
        offset_ms: Option<i64>,
    },
}

/// What this worker tells the others about itself (its registration's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Announcement {
    pub draining: bool,
    pub at_capacity: bool,
    /// Its clock is off by more than `worker.max_clock_skew`.
    pub clock_skewed: bool,
    /// The last offset measured (announced when it moved by `OFFSET_ANNOUNCE_STEP_MS`).
    pub clock_offset_ms: Option<i64>,
}

/// Everything the shell needs to start a run.
#[derive(Debug, Clone)]
pub struct RunOrder {
    pub run_id: String,
    pub job: Arc<StoredJob>,
    pub planned: i64,
    pub attempt: u32,
    pub trigger: crate::model::Trigger,
    pub traceparent: Option<String>,
    pub claim: ClaimTimes,
    /// When the core decided to start it (the trace's spawn span starts here).
    pub fired_at: i64,
    /// A dependency run's root tick (`CRONMESH_ROOT_JOB`, `CRONMESH_ROOT_PLANNED_AT`).
    pub root: Option<crate::model::Root>,
}

/// Something the core wants done.
#[derive(Debug)]
pub enum Effect {
    /// Claim these ticks (compare-and-create), then answer with `Input::Claimed { batch }`.
    Claim { batch: u64, requests: Vec<ClaimRequest> },
    /// Delete a run-now request that was claimed.
    AckRunNow { job: String, trigger: String },
    /// `forbid`, `buffer_*`: mark the run as running cluster-wide, only if no other run of the
    /// job is marked (and, with `guard_buffer`, its buffer is empty); answer with
    /// `Input::Marked`.
    Mark {
        job: String,
        value: ClaimValue,
        lease: i64,
        guard_buffer: bool,
    },
    /// Append a tick to the job's buffer unless it holds `limit`; answer with `Input::Buffered`.
    Buffer {
        job: String,
        tick: BufferedTick,
        limit: usize,
    },
    /// Take the oldest buffered tick (`value.run_id`): if no run is marked and the buffer is at
    /// `revision`, mark it running and leave `rest`; answer with `Input::Took`.
    TakeBuffered {
        job: String,
        revision: i64,
        rest: Vec<BufferedTick>,
        value: ClaimValue,
        lease: i64,
    },
    /// Remove a deleted job's buffer if it is at `revision`; answer with `Input::BufferCleared`.
    ClearBuffer {
        job: String,
        revision: i64,
        ticks: Vec<BufferedTick>,
    },
    /// Clear a running mark.
    Unmark { job: String, run_id: String },
    /// Read these jobs' full specs (a worker holds only what ownership needs of the jobs it
    /// does not own); answer with `Input::Fetched`.
    FetchJobs { names: Vec<String> },
    /// Start the process; answer with `Input::Spawned`, then `Input::Exited`.
    Spawn(Box<RunOrder>),
    /// Kill a run of this worker (its whole process group), recorded as `killed` with `reason`.
    Kill { run_id: String, reason: String },
    /// Ask every worker to kill matching runs (`replace` across an ownership move).
    BroadcastKill(KillSignal),
    /// Hand a run start to the reporter.
    ReportStarted(RunStarted),
    /// Hand a finished (or skipped, or lost) record to the reporter.
    ReportFinished(Box<RunRecord>),
    /// Update this worker's registration: draining, at capacity, its clock.
    Announce(Announcement),
}
