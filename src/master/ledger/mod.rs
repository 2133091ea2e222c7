//! The tick ledger: every expected tick of every job ends with exactly one record.

pub mod core;
