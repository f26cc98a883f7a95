//! The application on top of every concern: configuration, the broker it builds, the shared state, the route
//! table and the OpenAPI document built from it, binding and serving, graceful shutdown
//! and the metrics registry.

pub(crate) mod broker;
pub(crate) mod config;
pub(crate) mod metrics;
mod openapi;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod shutdown;
mod state;
