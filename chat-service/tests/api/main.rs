//! chat-service behaviour over real HTTP, Postgres (a fresh database per test) and Redis (a
//! fresh key and channel prefix per test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod attachments;
mod authorization;
mod bus;
mod events;
mod features;
mod groups;
mod health;
mod helpers;
mod hostile;
mod messages;
mod moderation;
mod ordering;
mod outages;
mod poison;
mod reads;
mod rooms;
mod search;
mod settings;
mod webhooks;
