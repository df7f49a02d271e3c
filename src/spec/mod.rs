//! buildctl's flag grammar turned into typed specs, validated before anything starts (no I/O beyond checking paths and reading the files flags name).

pub mod build;
pub mod cache;
pub mod csv;
pub mod docker;
pub mod kaniko;
pub mod policy;
pub mod secret;
pub mod ssh;
