#!/usr/bin/env bash
# Counts the release server's instructions under callgrind for a fixed small workload:
# 100 users × 2 connections, 4,000 deliveries/s for 5 s (20,000 deliveries) through
# POST /v1/events. Instruction counts repeat from run to run, whatever else the machine
# does, so they compare two builds where CPU seconds are too noisy (docs/performance.md).
#
#   benches/scripts/callgrind.sh [OUT]          # default callgrind.out
#   BIN=/path/to/other/build benches/scripts/callgrind.sh before.out
#   callgrind_annotate callgrind.out | head -40
set -euo pipefail

cd "$(dirname "$0")/../.."
out=${1:-callgrind.out}
port=${PORT:-18090}
bin=${BIN:-target/release}
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
build_unless_bin

valgrind --tool=callgrind --callgrind-out-file="$out" "$bin/agentwire-server" \
    --listen "127.0.0.1:$port" --jwt-secret callgrind-secret-of-at-least-32-bytes --api-keys callgrind-api-key-0001 --publish-rate 0 \
    --demo off >/tmp/agentwire-callgrind-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
wait_for_port "$port" 100 0.2
# Latency is meaningless under valgrind: the bound is lifted so the run always completes.
"$bin/loadgen" steady --server "127.0.0.1:$port" --jwt-secret callgrind-secret-of-at-least-32-bytes --api-key callgrind-api-key-0001 \
    --users 100 --rate 4000 --duration 5s --drain 3s --p99-limit-ms 100000
kill -INT "$server"
wait "$server" || true
trap - EXIT
callgrind_annotate "$out" 2>/dev/null | grep -m1 "PROGRAM TOTALS"
