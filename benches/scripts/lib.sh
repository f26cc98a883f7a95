# Shared by the scripts in benches/scripts: sourced, not run.

# wait_for_port PORT [TRIES] [DELAY]: waits until something listens on 127.0.0.1:PORT.
wait_for_port() {
    local port=$1 tries=${2:-100} delay=${3:-0.1}
    for _ in $(seq "$tries"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep "$delay"
    done
    echo "nothing listens on 127.0.0.1:$port" >&2
    return 1
}

# check_quiet: refuses to go on (exit 3) while the 1-minute load average is above MAX_LOAD
# (default 0.8), since another process on the cores would skew every figure; FORCE=1 goes
# on anyway.
check_quiet() {
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    if [[ "${FORCE:-0}" != 1 ]] && awk -v l="$load" -v m="${MAX_LOAD:-0.8}" 'BEGIN { exit !(l > m) }'; then
        echo "load average $load > ${MAX_LOAD:-0.8}: not measuring (FORCE=1 to override)" >&2
        exit 3
    fi
}

# build_unless_bin: builds the release server, the load generator and the reference hub
# unless BIN names a directory holding them already.
build_unless_bin() {
    if [[ -z "${BIN:-}" ]]; then
        cargo build --release -q -p agentwire-server -p agentwire-bench
    fi
}

# prepare_measurement: check_quiet, then build_unless_bin; sets `bin` to the directory of
# the binaries.
prepare_measurement() {
    check_quiet
    build_unless_bin
    bin=${BIN:-target/release}
}

# Pids of the servers started below; whatever is still running when the calling script
# exits is stopped.
started=()

# stop_server PID: stops a server started by start_pinned_server and waits for it.
stop_server() {
    local pid=$1 keep=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${started[@]}"; do
        if [[ "$p" != "$pid" ]]; then keep+=("$p"); fi
    done
    started=("${keep[@]}")
}

stop_started() {
    local p
    for p in "${started[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${started[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    started=()
}

# start_pinned_server PORT SECRET KEY LOG [KIND]: starts a release server pinned to
# SERVER_CORES (default: core 0) with the benchmark settings, and waits until it listens.
# KIND is `agentwire` (the default: agentwire-server with no publish rate limit and no
# demo page) or `refhub` (the reference hub); both get the secret, the API key, room for
# 19,000 connections and SERVER_ARGS on top. Sets `server` to its pid; it is stopped by
# stop_server, or when the calling script exits.
start_pinned_server() {
    local port=$1 secret=$2 key=$3 log=$4 kind=${5:-agentwire}
    local bin=${BIN:-target/release}
    local -a cmd
    case $kind in
        agentwire) cmd=("$bin/agentwire-server" --publish-rate 0 --demo off) ;;
        refhub) cmd=("$bin/refhub") ;;
        *)
            echo "start_pinned_server: unknown kind $kind" >&2
            return 2
            ;;
    esac
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    taskset -c "${SERVER_CORES:-0}" "${cmd[@]}" \
        --listen "127.0.0.1:$port" --jwt-secret "$secret" --api-keys "$key" \
        --max-connections 19000 ${SERVER_ARGS:-} >"$log" 2>&1 &
    server=$!
    started+=("$server")
    trap stop_started EXIT
    wait_for_port "$port"
}

# start_pinned_redis PORT LOG: starts a private redis-server (no persistence) on
# 127.0.0.1:PORT, pinned to SERVER_CORES like the servers, and waits until it answers.
# Refuses a port something already listens on, so it never touches another Redis. Sets
# `redis_pid`; it is stopped by stop_server, or when the calling script exits.
start_pinned_redis() {
    local port=$1 log=$2
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "something already listens on 127.0.0.1:$port: not starting Redis there" >&2
        return 1
    fi
    taskset -c "${SERVER_CORES:-0}" redis-server --port "$port" --bind 127.0.0.1 \
        --save '' --appendonly no >"$log" 2>&1 &
    redis_pid=$!
    started+=("$redis_pid")
    trap stop_started EXIT
    wait_for_port "$port"
}
