#!/usr/bin/env bash
# Two agentwire nodes on one Redis (issue 12, "Measured"), against the same two nodes on
# the memory broker, in one run (docs/performance.md, "Several nodes").
#
#   benches/scripts/redis_cluster_run.sh                 # both brokers, ROUNDS=3
#   BROKERS=memory SHORT=1 FORCE=1 ROUNDS=1 benches/scripts/redis_cluster_run.sh
#
# A private redis-server (no persistence) on REDIS_PORT (default 16390) and two release
# agentwire-server nodes on PORT and PORT+1 (default 18110, 18111), all pinned to
# SERVER_CORES (core 0); the load generator on core 1: 1,000 users x 2 connections,
# 200-byte events, batches of 50. Two targets, each ROUNDS rounds of memory then redis:
#   cluster_sweep  highest deliveries/s with p99 <= 50 ms and nothing lost, with CPU-s per
#                  million deliveries of both nodes plus Redis at that rate
#   cluster_cpu    a steady CLUSTER_RATE (20,000 deliveries/s): CPU-s per million
#                  deliveries of both nodes plus Redis, and Redis commands per published
#                  event (INFO commandstats before and after)
# Placement: on Redis every connection and every publish request goes to a random node
# (PLACEMENT_REDIS), so deliveries cross nodes; memory nodes share nothing, so there each
# user's connections and publishes stay on one node (pinned) and each node delivers what
# it accepted. Nodes run `--run-lifecycle off` unless LIFECYCLES names more: with
# LIFECYCLES="off enforce" each broker also runs as contender BROKER-enforce, whose nodes
# check every run's order (on Redis atomically with the append, in the publish script), so
#   BROKERS=redis LIFECYCLES="off enforce" benches/scripts/redis_cluster_run.sh
# measures what the cluster-wide lifecycle check costs (docs/performance.md). The load
# generator publishes each user's events in order (one request in flight per lane), so
# runs are well-formed wherever their events land. Redis is flushed between rounds.
# AW_ARGS adds flags to every node (e.g. `--redis-key-prefix`).
#
# Result lines go to RESULTS (benches/results/cluster.jsonl), tagged like side_by_side.sh's;
# report.py prints the table (redis / memory) at the end. SHORT=1 shrinks every size and
# duration to check the tools; MAX_LOAD/FORCE as in lib.sh; BIN=DIR takes the binaries
# from DIR.
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=benches/scripts/lib.sh
source benches/scripts/lib.sh
prepare_measurement

if [[ "${SHORT:-0}" == 1 ]]; then
    : "${USERS:=50}" "${DURATION:=3s}" "${SWEEP_RATES:=2000,4000}" "${SWEEP_STEP:=3s}"
    : "${CLUSTER_RATE:=4000}"
fi
users=${USERS:-1000}
duration=${DURATION:-20s}
sweep_rates=${SWEEP_RATES:-10000,20000,30000,40000,50000,60000,70000,80000,90000,100000,120000}
sweep_step=${SWEEP_STEP:-10s}
cluster_rate=${CLUSTER_RATE:-20000}
rounds=${ROUNDS:-3}
read -r -a brokers <<<"${BROKERS:-memory redis}"
read -r -a lifecycles <<<"${LIFECYCLES:-off}"
contenders=()
for broker in "${brokers[@]}"; do
    for lifecycle in "${lifecycles[@]}"; do
        case $lifecycle in
            off) contenders+=("$broker") ;;
            enforce) contenders+=("$broker-enforce") ;;
            *) echo "LIFECYCLES: unknown lifecycle '$lifecycle' (off, enforce)" >&2; exit 2 ;;
        esac
    done
done
port=${PORT:-18110}
redis_port=${REDIS_PORT:-16390}
results=${RESULTS:-benches/results/cluster.jsonl}
run_id=${RUN_ID:-cluster-$(date -u +%Y%m%dT%H%M%SZ)}
secret=cluster-secret-of-at-least-32-bytes
key=cluster-api-key-0001
mkdir -p "$(dirname "$results")"

redis_url=redis://127.0.0.1:$redis_port
if [[ " ${brokers[*]} " == *" redis "* ]]; then
    start_pinned_redis "$redis_port" /tmp/agentwire-cluster-redis.log
fi

# round TARGET CONTENDER N: one contender's round of one target; CONTENDER is a broker,
# with `-enforce` when its nodes enforce the run lifecycle.
round() {
    local target=$1 contender=$2 n=$3 placement=pinned
    local broker=${contender%-enforce} lifecycle=off
    [[ $contender == *-enforce ]] && lifecycle=enforce
    local -a scenario extra=() nodes=()
    local node_args="--run-lifecycle $lifecycle ${AW_ARGS:-}"
    if [[ $broker == redis ]]; then
        placement=${PLACEMENT_REDIS:-random}
        node_args+=" --broker redis --redis-url $redis_url"
        extra=(--extra-pid "$redis_pid" --redis "$redis_url")
        redis-cli -p "$redis_port" flushall >/dev/null
    fi
    case $target in
        cluster_sweep)
            scenario=(sweep --rates "$sweep_rates" --duration "$sweep_step" --drain 3s
                --p99-limit-ms 50)
            ;;
        cluster_cpu) scenario=(steady --rate "$cluster_rate" --duration "$duration" --p99-limit-ms 50) ;;
    esac
    echo "== $run_id: $target, round $n, $contender" >&2
    local -a servers=() pids=()
    for i in 0 1; do
        SERVER_ARGS=$node_args start_pinned_server "$((port + i))" "$secret" "$key" \
            "/tmp/agentwire-cluster-$contender-$i.log"
        nodes+=("$server")
        servers+=(--server "127.0.0.1:$((port + i))")
        pids+=(--server-pid "$server")
    done
    taskset -c "${LOADGEN_CORES:-1}" "$bin/loadgen" "${scenario[@]}" \
        "${servers[@]}" "${pids[@]}" "${extra[@]}" --placement "$placement" \
        --jwt-secret "$secret" --api-key "$key" --users "$users" \
        --meta "run=$run_id" --meta "target=$target" --meta "contender=$contender" \
        --meta "baseline=${contenders[0]}" --meta "round=$n" --out "$results" >/dev/null
    for pid in "${nodes[@]}"; do
        stop_server "$pid"
    done
}

for target in cluster_sweep cluster_cpu; do
    for n in $(seq "$rounds"); do
        for contender in "${contenders[@]}"; do
            round "$target" "$contender" "$n"
        done
    done
done

python3 benches/scripts/report.py --run "$run_id" "$results"
