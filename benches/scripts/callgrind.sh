#!/usr/bin/env bash
# Counts the release server's instructions (or the load generator's) under callgrind for a
# fixed small workload: 100 users × 2 connections, 4,000 deliveries/s for 5 s (20,000
# deliveries) through POST /v1/events. Instruction counts repeat from run to run, whatever
# else the machine does, so they compare two builds where CPU seconds are too noisy
# (docs/performance.md).
#
#   benches/scripts/callgrind.sh [OUT]          # default callgrind.out
#   BIN=/path/to/other/build benches/scripts/callgrind.sh before.out
#   callgrind_annotate callgrind.out | head -40
#   KIND=refhub benches/scripts/callgrind.sh ref.out     # the reference hub instead
#   SERVER_ARGS="--run-lifecycle off" benches/scripts/callgrind.sh   # extra server flags
#   KIND=loadgen benches/scripts/callgrind.sh lg.out    # the load generator instead, against a
#                                                       # reference hub outside valgrind
set -euo pipefail

cd "$(dirname "$0")/../.."
out=${1:-callgrind.out}
port=${PORT:-18090}
bin=${BIN:-target/release}
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
build_unless_bin

kind=${KIND:-agentwire}
# Which process callgrind counts: the server (agentwire or the reference hub), or the load
# generator (then the reference hub serves it at full speed, outside valgrind).
server_wrap=(valgrind --tool=callgrind --callgrind-out-file="$out")
loadgen_wrap=()
case $kind in
    agentwire) cmd=("$bin/agentwire-server" --publish-rate 0 --demo off) ;;
    refhub) cmd=("$bin/refhub") ;;
    loadgen)
        cmd=("$bin/refhub")
        loadgen_wrap=("${server_wrap[@]}")
        server_wrap=()
        ;;
    *)
        echo "callgrind.sh: unknown KIND ${KIND}" >&2
        exit 2
        ;;
esac
# shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
"${server_wrap[@]}" "${cmd[@]}" \
    --listen "127.0.0.1:$port" --jwt-secret callgrind-secret-of-at-least-32-bytes \
    --api-keys callgrind-api-key-0001 ${SERVER_ARGS:-} >/tmp/agentwire-callgrind-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
wait_for_port "$port" 100 0.2
# Latency is meaningless under valgrind: the bound is lifted so the run always completes.
"${loadgen_wrap[@]}" "$bin/loadgen" steady --server "127.0.0.1:$port" --jwt-secret callgrind-secret-of-at-least-32-bytes --api-key callgrind-api-key-0001 \
    --users 100 --rate 4000 --duration 5s --drain 3s --p99-limit-ms 100000
# agentwire stops on SIGINT, the reference hub on SIGTERM; callgrind writes its counts as
# the process ends either way.
if [[ $kind != agentwire ]]; then kill -TERM "$server"; else kill -INT "$server"; fi
wait "$server" || true
trap - EXIT
callgrind_annotate "$out" 2>/dev/null | grep -m1 "PROGRAM TOTALS"
