#!/usr/bin/env bash
# A team MLflow tracking server: PostgreSQL backend store, proxied artifacts in one folder.
#
#   scripts/mlflow-server.sh up       # install PostgreSQL (apt) and psycopg2 if missing, start both
#   scripts/mlflow-server.sh status   # exit 0 when the server answers /health
#   scripts/mlflow-server.sh down     # stop the server and PostgreSQL (data is kept)
#   scripts/mlflow-server.sh uri      # print the tracking URI to use: tracking=server tracking.uri=...
#
# Everything binds to MLFLOW_HOST (default 127.0.0.1). Workers log through the server, which
# stores artifacts under MLFLOW_STATE_DIR/artifacts, so they need no shared file system.
# Settings (environment): MLFLOW_PORT (5055), MLFLOW_PG_PORT (5439), MLFLOW_STATE_DIR
# (/var/lib/sweeplab-mlflow), MLFLOW_WORKERS (2), PYTHON (the venv python with mlflow).
set -euo pipefail

HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5055}
PG_PORT=${MLFLOW_PG_PORT:-5439}
STATE_DIR=${MLFLOW_STATE_DIR:-/var/lib/sweeplab-mlflow}
WORKERS=${MLFLOW_WORKERS:-2}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PG_DATA=$STATE_DIR/pg
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)

say() { echo "mlflow-server: $*" >&2; }

install_packages() {
    if [[ -z $PG_BIN ]]; then
        say "installing PostgreSQL from Debian"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    "$PYTHON" -c "import psycopg2" 2>/dev/null || "$PYTHON" -m pip install -q psycopg2-binary
}

as_postgres() { runuser -u postgres -- "$@"; }

start_postgres() {
    mkdir -p "$STATE_DIR"
    if [[ ! -s $STATE_DIR/pg-password ]]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE_DIR/pg-password")
    fi
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        mkdir -p "$PG_DATA" && chown postgres:postgres "$PG_DATA"
        as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    fi
    if ! as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w start \
            -o "-c listen_addresses=$HOST -p $PG_PORT -k $PG_DATA" >/dev/null
    fi
    local password psql=("$PG_BIN/psql" -h "$PG_DATA" -p "$PG_PORT" -U postgres -qtA)
    password=$(cat "$STATE_DIR/pg-password")
    if [[ -z $(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='mlflow'") ]]; then
        as_postgres "${psql[@]}" -c "CREATE ROLE mlflow LOGIN PASSWORD '$password'"
    fi
    if [[ -z $(as_postgres "${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='mlflow'") ]]; then
        as_postgres "${psql[@]}" -c "CREATE DATABASE mlflow OWNER mlflow"
    fi
}

healthy() { "$PYTHON" - "$HOST" "$PORT" <<'EOF'
import sys, urllib.request
try:
    ok = urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/health", timeout=2).read() == b"OK"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

start_server() {
    healthy && return
    local backend
    backend="postgresql+psycopg2://mlflow:$(cat "$STATE_DIR/pg-password")@$HOST:$PG_PORT/mlflow"
    mkdir -p "$STATE_DIR/artifacts"
    setsid "$(dirname "$PYTHON")/mlflow" server --backend-store-uri "$backend" \
        --serve-artifacts --artifacts-destination "$STATE_DIR/artifacts" \
        --host "$HOST" --port "$PORT" --workers "$WORKERS" \
        >"$STATE_DIR/server.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/server.pid"
    for _ in $(seq 120); do
        healthy && return
        kill -0 "$(cat "$STATE_DIR/server.pid")" 2>/dev/null || break
        sleep 1
    done
    say "error: the server did not become healthy; see $STATE_DIR/server.log"
    tail -5 "$STATE_DIR/server.log" >&2
    exit 1
}

up() {
    local started=$SECONDS
    install_packages
    start_postgres
    start_server
    say "up in $((SECONDS - started)) s: http://$HOST:$PORT (PostgreSQL on $HOST:$PG_PORT)"
}

down() {
    if [[ -s $STATE_DIR/server.pid ]]; then
        # setsid made the server its own process group: stop it with its workers
        kill -- "-$(cat "$STATE_DIR/server.pid")" 2>/dev/null || true
        rm -f "$STATE_DIR/server.pid"
    fi
    if [[ -n $PG_BIN && -f $PG_DATA/PG_VERSION ]]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w stop >/dev/null 2>&1 || true
    fi
    say "down"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) healthy && say "up: http://$HOST:$PORT" || { say "down"; exit 1; } ;;
    uri) echo "http://$HOST:$PORT" ;;
    *) echo "usage: $0 up|down|status|uri" >&2; exit 2 ;;
esac
