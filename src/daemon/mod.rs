//! The ephemeral buildkitd: mode, paths, argv, start, readiness and teardown. It knows nothing of builds.

pub mod apparmor;
pub mod diagnose;
pub mod doctor;
pub mod facts;
pub mod fallback;
pub mod leases;
pub mod mode;
pub mod nodepaths;
pub mod nsinit;
pub mod paths;
pub mod plan;
pub mod ready;
pub mod statelock;
pub mod storage;
pub mod supervisor;
pub mod sweep;

pub use mode::Mode;
pub use plan::Plan;
pub use supervisor::Daemon;
