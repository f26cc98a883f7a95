#!/usr/bin/env bash
# Measures agentwire against the reference hub (benches/src/bin/refhub) in one run, on the
# same machine under the same pinning, and prints every figure as a ratio to the
# reference with the absolute figures beside it (docs/performance.md, "Side by side").
#
#   benches/scripts/side_by_side.sh [TARGET...]          # default: every target
#   ROUNDS=5 benches/scripts/side_by_side.sh cpu p99      # more rounds of two targets
#   SHORT=1 FORCE=1 ROUNDS=1 benches/scripts/side_by_side.sh   # a smoke run of the tools
#
# Targets (issue 16), in this order:
#   sweep       highest deliveries/s with p99 <= 10 ms and nothing lost (steps of SWEEP_RATES)
#   cpu         server CPU-s per million deliveries at CPU_RATE (40,000/s)
#   saturation  the same at SATURATION_RATE (200,000/s offered: more than either serves)
#   p99         p99 at P99_RATE (60,000/s)
#   idle        memory per idle connection, fresh and after a burst (IDLE_CONNECTIONS)
#   churn       resident memory 60 s after a churn soak, over the pre-traffic baseline
#   lifecycle   agentwire --run-lifecycle enforce against off, at CPU_RATE
#
# Each target runs ROUNDS (default 3) rounds of A then B — the reference hub then
# agentwire (lifecycle: agentwire off then enforce) — so a drift of the machine weighs on
# both. Every contender gets a fresh server pinned to core 0 (SERVER_CORES), the load
# generator runs on core 1 (LOADGEN_CORES), 1,000 users x 2 connections, 200-byte events
# in batches of 50. agentwire runs with `--run-lifecycle off` (the reference checks no
# runs) plus AW_ARGS; for idle and churn also with `--history-max-age 5s --run-ttl 5s
# --receipt-ttl 5s --sweep-interval 1s`, so its history, run states and the receipts of
# users who left have expired when memory is read (the reference keeps none of them).
#
# Each round appends its loadgen result line to RESULTS (benches/results/side_by_side.jsonl),
# tagged `meta: {run, target, contender, baseline, round}`; the table of the run is printed
# at the end by report.py (`python3 benches/scripts/report.py --markdown` reprints it).
# Refuses to start while the load average is above MAX_LOAD (lib.sh; FORCE=1 overrides).
# SHORT=1 shrinks every size and duration to check the tools in a minute (its figures mean
# nothing). BIN=DIR takes the binaries from DIR.
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
prepare_measurement

if [[ "${SHORT:-0}" == 1 ]]; then
    : "${USERS:=50}" "${DURATION:=3s}" "${SWEEP_RATES:=2000,4000,8000}" "${SWEEP_STEP:=3s}"
    : "${CPU_RATE:=4000}" "${P99_RATE:=6000}" "${SATURATION_RATE:=20000}"
    : "${IDLE_CONNECTIONS:=400}" "${IDLE_HOLD:=2s}" "${IDLE_SETTLE:=7s}"
    : "${CHURN_CYCLES:=2}" "${CHURN_RATE:=4000}" "${CHURN_AFTER:=8s}"
fi
users=${USERS:-1000}
duration=${DURATION:-20s}
sweep_rates=${SWEEP_RATES:-20000,30000,40000,50000,60000,70000,80000,90000,100000,120000,140000,160000,180000,200000}
sweep_step=${SWEEP_STEP:-10s}
cpu_rate=${CPU_RATE:-40000}
p99_rate=${P99_RATE:-60000}
saturation_rate=${SATURATION_RATE:-200000}
idle_connections=${IDLE_CONNECTIONS:-15000}
idle_hold=${IDLE_HOLD:-30s}
idle_settle=${IDLE_SETTLE:-10s}
churn_cycles=${CHURN_CYCLES:-5}
churn_rate=${CHURN_RATE:-20000}
churn_after=${CHURN_AFTER:-60s}
rounds=${ROUNDS:-3}
port=${PORT:-18100}
results=${RESULTS:-benches/results/side_by_side.jsonl}
run_id=${RUN_ID:-sbs-$(date -u +%Y%m%dT%H%M%SZ)}
secret=side-by-side-secret-of-32-bytes-min
key=side-by-side-api-key-1
mkdir -p "$(dirname "$results")"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(sweep cpu saturation p99 idle churn lifecycle)
fi

# round TARGET CONTENDER BASELINE N: one contender's round of one target.
round() {
    local target=$1 who=$2 baseline=$3 n=$4 kind=agentwire server_args=${AW_ARGS:-}
    local -a scenario
    case $who in
        refhub) kind=refhub server_args="" ;;
        agentwire) server_args+=" --run-lifecycle off" ;;
        agentwire-enforce) server_args+=" --run-lifecycle enforce" ;;
    esac
    case $target in
        sweep) scenario=(sweep --rates "$sweep_rates" --duration "$sweep_step" --drain 3s) ;;
        cpu | lifecycle) scenario=(steady --rate "$cpu_rate" --duration "$duration") ;;
        saturation) scenario=(steady --rate "$saturation_rate" --duration "$duration" --drain 5s) ;;
        p99) scenario=(steady --rate "$p99_rate" --duration "$duration") ;;
        idle)
            scenario=(idle --connections "$idle_connections" --hold "$idle_hold" --settle "$idle_settle")
            ;;
        churn)
            scenario=(churn --cycles "$churn_cycles" --rate "$churn_rate" --duration "$duration"
                --settle "$churn_after" --rss-at "$churn_after")
            ;;
        *)
            echo "unknown target $target" >&2
            exit 2
            ;;
    esac
    if [[ $kind == agentwire && ($target == idle || $target == churn) ]]; then
        server_args+=" --history-max-age 5s --run-ttl 5s --receipt-ttl 5s --sweep-interval 1s"
    fi
    echo "== $run_id: $target, round $n, $who" >&2
    SERVER_ARGS=$server_args start_pinned_server "$port" "$secret" "$key" \
        "/tmp/agentwire-side-by-side-$who.log" "$kind"
    taskset -c "${LOADGEN_CORES:-1}" "$bin/loadgen" "${scenario[@]}" \
        --server "127.0.0.1:$port" --server-pid "$server" \
        --jwt-secret "$secret" --api-key "$key" --users "$users" \
        --meta "run=$run_id" --meta "target=$target" --meta "contender=$who" \
        --meta "baseline=$baseline" --meta "round=$n" --out "$results" >/dev/null
    stop_server "$server"
}

for target in "${targets[@]}"; do
    pair=(refhub agentwire)
    if [[ $target == lifecycle ]]; then pair=(agentwire agentwire-enforce); fi
    for n in $(seq "$rounds"); do
        for who in "${pair[@]}"; do
            round "$target" "$who" "${pair[0]}" "$n"
        done
    done
done

python3 benches/scripts/report.py --run "$run_id" "$results"
