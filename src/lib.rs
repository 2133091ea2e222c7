//! cronmesh: a distributed cron. Every tick of every job runs exactly once, somewhere in a fleet
//! of workers coordinated through etcd, and every run is recorded and observable.
//!
//! Module map (one concern each; see docs/ARCHITECTURE.md for the invariants):
//! - [`cluster`]: what both roles agree on: who schedules which job, and the report seam.
//! - [`config`]: typed configuration for every role, file + env + flags, validated up front.
//! - [`model`]: jobs, run records, worker registrations, signals; validation of job specs.
//! - [`schedule`]: cron and `@every` parsing (names, `a/n`, `H`), the crontab(5) day rule, the
//!   cron(8) DST rule, time zones, next fire times (pure functions).
//! - [`coord`]: everything stored in or learnt from etcd; the only module that talks to etcd.
//! - [`worker`]: the worker role: the scheduler (a sans-I/O core and its shell), the executor,
//!   the reporter.
//! - [`master`]: the master role: REST API, event feed, web page, seed routes, run-log ingest, auth.
//! - [`logstore`]: the run-log store trait, SQLite and MongoDB backends, conformance suite.
//! - [`ctl`]: `cronmesh ctl`, the command-line client of the REST API.
//! - [`telemetry`]: metric names, typed internal events, logging, the ops HTTP listener.
//! - [`timer`]: a deadline heap, the clock-free timer of both sans-I/O cores.
//! - [`http_client`]: every outgoing HTTP client starts here (TLS provider installed once).
//! - [`pem`]: PEM certificates and keys (etcd's CA and client certificate), read with errors
//!   that name the file and what is wrong.
//! - [`signing`]: job signatures (Ed25519): masters sign every job they store, workers run only
//!   jobs signed by a key they trust.
//! - [`etcd_process`]: starting etcd as a child process (standalone mode and tests).
//! - [`mongo_process`]: starting the MongoDB stand-in server (`secantusd-py`) for tests and load tests.

pub mod child_process;
pub mod cluster;
pub mod config;
pub mod coord;
pub mod ctl;
pub mod etcd_process;
pub mod http_client;
pub mod logstore;
pub mod master;
pub mod model;
pub mod mongo_process;
pub mod pem;
pub mod schedule;
pub mod signing;
pub mod telemetry;
pub mod timer;
pub mod worker;
