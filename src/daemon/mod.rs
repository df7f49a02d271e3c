//! The ephemeral buildkitd: mode, paths, argv, start, readiness and teardown. It knows nothing of builds.

pub mod diagnose;
pub mod facts;
pub mod mode;
pub mod paths;
pub mod plan;
pub mod ready;
pub mod supervisor;

pub use mode::Mode;
pub use plan::Plan;
pub use supervisor::Daemon;
