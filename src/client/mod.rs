//! BuildKit's Control API over tonic: connecting to a daemon and the calls bkrun makes.

pub mod admin;
pub mod connect;
pub mod errors;
pub mod failover;
pub mod gateway;
pub mod histories;
pub mod layouts;
pub mod localcache;
pub mod metadata;
pub mod probe;
pub mod services;
pub mod solve;
pub mod step;
