//! `cluster`: what both roles need to agree on without importing each other — who schedules
//! which job (`ownership`), the seam run reports cross (`report`), and who may run a job as
//! another user (`run_as`). Pure code: no etcd, no HTTP, no clock.

pub mod ownership;
pub mod report;
pub mod run_as;
