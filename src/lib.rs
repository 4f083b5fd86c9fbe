//! Heimdall: a governance service for LLM API gateways. Budgets and rate limits for customers,
//! teams, virtual keys, users, providers and models, checked and charged in memory, persisted
//! to SQLite or PostgreSQL.

pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod telemetry;
pub mod worker;

pub use app::App;
pub use config::Config;
