#!/usr/bin/env bash
# Runs one loadgen scenario against a freshly started release server, the server pinned to
# core 0 and the load generator to core 1 (docs/performance.md, "Method").
#
#   benches/scripts/run.sh SCENARIO [LOADGEN ARGS...]
#   SERVER_ARGS="--history-max-age 5s" benches/scripts/run.sh churn --cycles 10
#
# The server gets a fixed secret and API key, no publish rate limit (the load generator is
# the only publisher), and room for 19,000 connections; SERVER_ARGS adds or overrides
# flags. The result line is appended to benches/results/SCENARIO.jsonl (RESULTS=FILE
# overrides). The run refuses to start when the 1-minute load average is above
# MAX_LOAD (default 0.8), since another process on the cores would skew every figure;
# FORCE=1 runs anyway. BIN=DIR takes both binaries from DIR instead of building them (to
# compare a build from before a change with one from after).
set -euo pipefail

cd "$(dirname "$0")/../.."
scenario=${1:?usage: run.sh SCENARIO [LOADGEN ARGS...]}
shift

# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
prepare_measurement
port=${PORT:-18080}
secret=loadgen-secret-of-at-least-32-bytes
key=loadgen-api-key-0001
results=${RESULTS:-benches/results/$scenario.jsonl}
mkdir -p "$(dirname "$results")"

start_pinned_server "$port" "$secret" "$key" "${SERVER_LOG:-/tmp/agentwire-bench-server.log}"

taskset -c 1 "$bin/loadgen" "$scenario" \
    --server "127.0.0.1:$port" --server-pid "$server" \
    --jwt-secret "$secret" --api-key "$key" --out "$results" "$@"
