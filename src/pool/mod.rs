//! A pool of daemons: the address lists people type (repeated `--addr`, comma lists, `{0..2}` patterns) and the order a route key puts them in.

pub mod pattern;
pub mod rendezvous;

pub use pattern::expand;
pub use rendezvous::order;
