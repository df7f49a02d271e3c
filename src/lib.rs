//! bkrun: a daemonless BuildKit runner; the library behind the `bkrun` binary, also used by the tests.

pub mod fsutil;
