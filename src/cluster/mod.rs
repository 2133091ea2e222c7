//! `cluster`: what both roles need to agree on without importing each other — who schedules
//! which job (`ownership`), and the seam run reports cross (`report`). Pure code: no etcd, no
//! HTTP, no clock.

pub mod ownership;
pub mod report;
