//! Integration tests: real `mqd` processes on 127.0.0.1, driven through the client library,
//! raw frames and `mqctl`. One binary, a module per area.

mod abuse;
mod auth;
mod chaos;
mod cluster;
mod coalesce;
mod common;
mod crash;
mod daemon;
mod disk;
mod errors;
mod fifo;
mod messages;
mod metrics;
mod mqctl;
mod peer;
mod queues;
mod quota;
mod sqs;
mod sqs_abuse;
