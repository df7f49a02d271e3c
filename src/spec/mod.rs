//! The grammars people type (buildctl's flags) → typed specs: [`build::resolve`] is the one step that brings in bkrun.toml, the environment and the Docker config's location, and checks everything before a daemon starts.

pub mod build;
pub mod cache;
pub mod csv;
pub mod docker;
pub mod dockerconfig;
pub mod entitlement;
pub mod kaniko;
pub mod output;
pub mod policy;
pub mod progress;
pub mod registry;
pub mod secret;
pub mod ssh;
