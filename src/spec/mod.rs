//! buildctl's flag grammar turned into typed specs, validated before anything starts (pure, no I/O but path checks).

pub mod build;
pub mod cache;
pub mod csv;
pub mod secret;
pub mod ssh;
