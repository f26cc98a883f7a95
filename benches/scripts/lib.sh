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

# build_unless_bin: builds the release server and load generator unless BIN names a
# directory holding both already.
build_unless_bin() {
    if [[ -z "${BIN:-}" ]]; then
        cargo build --release -q -p agentwire-server -p agentwire-bench
    fi
}

# start_pinned_server PORT SECRET KEY LOG: starts the release server on core 0 with the
# benchmark settings (no publish rate limit, room for 19,000 connections, no demo page,
# SERVER_ARGS on top), stops it when the calling script exits, and waits until it listens.
# Sets `server` to its pid.
start_pinned_server() {
    local port=$1 secret=$2 key=$3 log=$4
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    taskset -c 0 "${BIN:-target/release}/agentwire-server" \
        --listen "127.0.0.1:$port" --jwt-secret "$secret" --api-keys "$key" \
        --publish-rate 0 --max-connections 19000 --demo off ${SERVER_ARGS:-} \
        >"$log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
    wait_for_port "$port"
}
