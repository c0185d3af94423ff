//! auth-service behaviour over real HTTP, Postgres (a fresh database per test) and Redis (a
//! fresh key prefix per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod avatars;
mod edges;
mod helpers;
mod hostile;
mod login;
mod me;
mod register;
mod sessions;
mod tokens;
