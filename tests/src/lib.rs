//! `agentwire-e2e`: end-to-end tests of agentwire — a real server on `127.0.0.1:0` and real
//! WebSocket clients. The library part holds the shared test support; the tests live in
//! `tests/tests/`.
//!
//! What it is not: a unit-test home; each crate tests its own internals.
