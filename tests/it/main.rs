//! The integration tests, as one binary (one link for all): each module drives the real
//! service, started in-process on port 0 or as the release binary, against a fresh database of
//! each backend. PostgreSQL tests skip when the server at 127.0.0.1:5432 is unreachable, and
//! fail instead under `CI=true`.

#[macro_use]
mod common;

mod admin_api;
mod alerts;
mod auth;
mod durability;
mod envoy;
mod gateway;
mod holds;
mod operations;
mod outage;
mod persistence;
mod prices;
mod replicas;
mod validation;
mod worker;
