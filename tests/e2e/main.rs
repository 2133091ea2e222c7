//! End-to-end specs: real etcd processes, real `cronmesh worker` processes, real commands.
//! Each test builds its own cluster (temp dir, free ports), so tests run in parallel.

mod certs;
mod feed_client;
mod harness;

mod api;

mod backfill;
mod bad_input;
mod buffers;
mod capacity;
mod catchup;
mod clock_skew;
mod ctl;
mod dependencies;
mod deploy;
mod drain;
mod exactly_once;
mod failover;
mod feed;
mod gated;
mod hardening;
mod health;
mod history;
mod https;
mod ledger;
mod lifecycle;
mod logs;
mod mongodb;
mod notify;
mod observability;
mod openapi;
mod outage;
mod policies;
mod quickstart;
mod resume;
mod run_as;
mod schedules;
mod security;
mod shards;
mod sinks;
mod standalone;
mod traces;
mod watch;
mod web;
