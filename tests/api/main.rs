//! The integration suite: the real server on a real socket, on both stores, with a real
//! redis-server started by the harness.

mod helpers;
mod redis_cluster;
mod redis_server;
mod spec;

mod abuse;
mod bad_input;
mod behaviour;
mod cluster;
mod concurrency;
mod contract;
mod deploy;
mod health;
mod model;
mod outage;
mod process;
mod redis_store;
mod resharding;
mod slow_clients;
