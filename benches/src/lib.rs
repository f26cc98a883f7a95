//! `agentwire-bench`: criterion micro-benchmarks and the load generator for agentwire.
//!
//! What it is not: a test suite. Timings live here, never in pass/fail tests.
