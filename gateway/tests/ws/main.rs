//! The gateway over real WebSockets, with real chat-service instances, Postgres (a fresh
//! database per test) and Redis (a fresh prefix per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cluster;
mod delivery;
mod edges;
mod helpers;
mod hostile;
mod resilience;
mod sessions;
