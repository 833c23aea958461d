//! mqd: a replicated queue appliance.
//!
//! The crate has two halves. [`protocol`] (the wire codec) and [`client`] (the async client
//! library) always build; the server half (storage, state machine, QUIC server) builds
//! with the default `server` feature. `mqctl` uses the crate without that feature.

#![warn(missing_docs)]

pub mod client;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod frontend;
pub mod local;
#[cfg(all(test, feature = "server"))]
mod man;
#[cfg(feature = "server")]
pub mod peer;
pub mod process;
pub mod protocol;
#[cfg(feature = "server")]
pub mod raft;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sqs;
#[cfg(feature = "server")]
pub mod store;
