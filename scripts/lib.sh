# Shared helpers for hrl's scripts. Source it; do not run it.

step() { printf '\n== %s\n' "$*"; }

# Installs the Debian packages the tests and demo use, when missing;
# `install_test_deps browser` adds chromium (the fleet page's browser test).
install_test_deps() {
    local need=()
    if [ "${1:-}" = browser ]; then
        command -v chromium >/dev/null 2>&1 || need+=(chromium)
    fi
    command -v fio >/dev/null 2>&1 || need+=(fio)
    command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
    command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
    command -v losetup >/dev/null 2>&1 || need+=(mount)
    if [ ${#need[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "missing ${need[*]}; run as root to install them" >&2
            return 0
        fi
        step "apt-get install ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

# The Azure SDK for Python (azure-storage-blob), the independent client
# the Azure tests download and inspect blobs with: installed with pip into
# target/pydeps, found through PYTHONPATH.
install_py_deps() {
    if ! PYTHONPATH=target/pydeps python3 -c 'import azure.storage.blob' 2>/dev/null; then
        step "pip install azure-storage-blob (into target/pydeps)"
        python3 -m pip install --quiet --disable-pip-version-check --target target/pydeps azure-storage-blob
    fi
    export PYTHONPATH="$PWD/target/pydeps${PYTHONPATH:+:$PYTHONPATH}"
}

# A free TCP port on loopback.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Waits up to 10 s for something to listen on loopback PORT; 1 if nothing does.
wait_port() {
    for _ in $(seq 100); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
# Waits for the agent AGENT of spool SPOOL to reach data mode, looking TRIES
# times 0.2 s apart; 1 if it does not.
wait_for_data() {
    for _ in $(seq "$3"); do
        "$1" status --json --spool "$2" 2>/dev/null | grep -q '"mode": "data"' && return 0
        sleep 0.2
    done
    return 1
}

# Stops a process this script started: SIGTERM, then waits for it.
stop_pid() {
    [ -n "${1:-}" ] && kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null || true
}

# utime + stime of a process, in clock ticks.
ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# A benchmark's process server: `start_bench_gateway SHIPPER WORK REPO KEY
# [LAUNCHER...]` creates repository REPO with key file KEY, serves it on a
# free loopback port from WORK/gw-state (log in WORK/gateway.log; LAUNCHER,
# e.g. `taskset -c 1`, runs the server) and enrolls one machine, its
# identity in WORK/machine.id. INIT_FLAGS adds options to `init` (e.g.
# "--chunk-size 16384"). Sets GATEWAY_PID.
GATEWAY_PID=""
start_bench_gateway() {
    local shipper=$1 work=$2 repo=$3 key=$4 port fp
    shift 4
    # shellcheck disable=SC2086 # INIT_FLAGS is split into options
    "$shipper" init --repo "$repo" --key-file "$key" ${INIT_FLAGS:-} >/dev/null
    port=$(free_port)
    mkdir -p "$work/gw-state"
    fp=$("$shipper" serve --state-dir "$work/gw-state" --fingerprint)
    "$@" "$shipper" serve --listen "127.0.0.1:$port" --repo "$repo" --key-file "$key" \
        --state-dir "$work/gw-state" 2>"$work/gateway.log" &
    GATEWAY_PID=$!
    wait_port "$port" || { echo "the process server did not start:" >&2; cat "$work/gateway.log" >&2; return 1; }
    "$shipper" machines --state-dir "$work/gw-state" add bench >"$work/token"
    "$shipper" enroll --gateway "https://127.0.0.1:$port" --fingerprint "$fp" --token-file "$work/token" \
        --identity "$work/machine.id" >/dev/null
}

# Azurite (npm package `azurite`) for the blob-store tests: installed into
# target/azurite, started on a free loopback port with its own data folder
# and telemetry off, stopped by its PID. AZURITE_EXTRA_ARGS adds options
# (the Azure benchmark's rclone needs --skipApiVersionCheck).
AZURITE_PID=""
AZURITE_DIR=""
start_azurite() {
    if [ ! -x target/azurite/node_modules/.bin/azurite-blob ]; then
        step "npm install azurite (into target/azurite)"
        npm install --prefix target/azurite --no-audit --no-fund --loglevel=error azurite@3 >/dev/null
    fi
    local port
    port=$(free_port)
    AZURITE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/hrl-azurite-XXXXXX")
    target/azurite/node_modules/.bin/azurite-blob --blobHost 127.0.0.1 --blobPort "$port" \
        --location "$AZURITE_DIR" --disableTelemetry --silent ${AZURITE_EXTRA_ARGS:-} >"$AZURITE_DIR.log" 2>&1 &
    AZURITE_PID=$!
    if wait_port "$port"; then
        export AZURE_STORAGE_USE_EMULATOR=true
        export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$port"
        echo "azurite (pid $AZURITE_PID) listening on 127.0.0.1:$port"
        return 0
    fi
    echo "azurite did not start:" >&2
    cat "$AZURITE_DIR.log" >&2
    return 1
}
stop_azurite() {
    if [ -n "$AZURITE_PID" ]; then
        kill "$AZURITE_PID" 2>/dev/null || true
        wait "$AZURITE_PID" 2>/dev/null || true
        AZURITE_PID=""
    fi
    if [ -n "$AZURITE_DIR" ]; then
        rm -rf "$AZURITE_DIR" "$AZURITE_DIR.log"
        AZURITE_DIR=""
    fi
}
