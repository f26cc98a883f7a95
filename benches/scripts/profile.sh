#!/usr/bin/env bash
# Samples the release server with `perf` while loadgen holds a steady rate, server on core
# 0 and generator on core 1 (docs/performance.md, "Where the time goes").
#
#   benches/scripts/profile.sh [RATE] [OUT]     # defaults: 40000 deliveries/s, perf.data
#   perf report -i perf.data --no-children --sort sym
#
# perf samples the software clock (`cpu-clock`), which works where hardware counters are
# not offered (VMs). The profile covers 8 s in the middle of a 14 s steady period.
set -euo pipefail

cd "$(dirname "$0")/../.."
rate=${1:-40000}
out=${2:-perf.data}
port=${PORT:-18081}
bin=${BIN:-target/release}
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
build_unless_bin
start_pinned_server "$port" profile-secret-of-at-least-32-bytes profile-api-key-00001 /tmp/agentwire-profile-server.log
(sleep 4; perf record -F 2000 -e cpu-clock -g -o "$out" -p "$server" -- sleep 8 >/dev/null 2>&1) &
recorder=$!
taskset -c 1 "$bin/loadgen" steady --server "127.0.0.1:$port" --server-pid "$server" \
    --jwt-secret profile-secret-of-at-least-32-bytes --api-key profile-api-key-00001 --rate "$rate" --duration 14s --drain 2s
wait "$recorder" || true
echo "profile written to $out"
