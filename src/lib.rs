//! bkrun: a daemonless BuildKit runner; the library behind the `bkrun` binary, also used by the tests.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod fsutil;
pub mod gofmt;
pub mod host;
pub mod mountinfo;
pub mod ocilayout;
pub mod progress;
pub mod proto;
pub mod reaper;
pub mod run;
pub mod session;
pub mod spec;
pub mod sshkey;
pub mod tlsroots;
pub mod version;
