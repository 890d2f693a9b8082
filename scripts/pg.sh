#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for tests and CI: start | stop | url | status.
#
#   eval "$(scripts/pg.sh env)"        # or: export HASYNC_TEST_PG_URL="$(scripts/pg.sh start)"
#   pytest tests/alarms
#   scripts/pg.sh stop
#
# `start` initialises a cluster under /tmp (first time), starts it listening on
# 127.0.0.1 only, and prints a postgresql:// URL (superuser "postgres",
# password auth over TCP) for HASYNC_TEST_PG_URL. It is idempotent: a running
# server is reused, a stale postmaster.pid left by a crash is removed, a
# half-initialised data dir is recreated. `stop` stops the server and removes
# its data dir; stopping a server that is not there succeeds.
#
# Run as root, the server runs as the `postgres` user (PostgreSQL refuses
# root); otherwise as the calling user.
#
# Environment:
#   HASYNC_PG_PORT      port (default 55432)
#   HASYNC_PG_DIR       data dir (default /tmp/hasync-pg-$HASYNC_PG_PORT)
#   HASYNC_PG_PASSWORD  password of the postgres role (default "hasync")
#   HASYNC_PG_BIN       server binaries (default /usr/lib/postgresql/15/bin)
#   HASYNC_PG_USER      OS user running the server when started as root (default postgres)
set -euo pipefail

PORT="${HASYNC_PG_PORT:-55432}"
DATA="${HASYNC_PG_DIR:-/tmp/hasync-pg-$PORT}"
PASSWORD="${HASYNC_PG_PASSWORD:-hasync}"
BIN="${HASYNC_PG_BIN:-/usr/lib/postgresql/15/bin}"
OS_USER="${HASYNC_PG_USER:-postgres}"
LOG="$DATA.log"

die() { echo "pg.sh: $*" >&2; exit 1; }

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$OS_USER" -- "$@"
    else
        "$@"
    fi
}

url() {
    local pw
    pw="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PASSWORD")"
    echo "postgresql://postgres:${pw}@127.0.0.1:${PORT}/postgres"
}

# The server of $DATA is up. The pid in postmaster.pid must be a live *postgres* process: after a crash
# the pid may have been reused by something else, which pg_ctl alone would take for a running server.
running() {
    [ -f "$DATA/PG_VERSION" ] && [ -f "$DATA/postmaster.pid" ] || return 1
    local pid
    pid="$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)"
    [ -n "$pid" ] || return 1
    if [ -d /proc ]; then
        [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = postgres ] || return 1
        # A killed postmaster nobody reaped yet is a zombie, still named postgres.
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)" != Z ] || return 1
    fi
    as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

port_busy() {
    python3 - "$PORT" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as postgres does: TIME_WAIT is not "in use"
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
EOF
}

init() {
    [ -x "$BIN/initdb" ] || die "no PostgreSQL server binaries in $BIN (apt-get install postgresql-15, or set HASYNC_PG_BIN)"
    if [ "$(id -u)" -eq 0 ]; then
        id "$OS_USER" >/dev/null 2>&1 || die "user $OS_USER does not exist (PostgreSQL refuses to run as root)"
    fi
    rm -rf "$DATA"
    mkdir -p "$DATA"
    chmod 700 "$DATA"
    local pwfile
    pwfile="$(mktemp "${DATA}.pw.XXXXXX")"
    printf '%s\n' "$PASSWORD" >"$pwfile"
    if [ "$(id -u)" -eq 0 ]; then
        chown "$OS_USER": "$DATA" "$pwfile"
    fi
    # Trust on the Unix socket (only reachable by the data dir's owner), password over TCP.
    if ! as_owner "$BIN/initdb" -D "$DATA" -U postgres --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 --no-sync >"$LOG" 2>&1; then
        rm -f "$pwfile"
        cat "$LOG" >&2
        die "initdb failed"
    fi
    rm -f "$pwfile"
}

start() {
    if running; then
        url
        return
    fi
    # A crash leaves postmaster.pid and the socket's lock file behind; no server uses them (see running).
    rm -f "$DATA/postmaster.pid" "$DATA"/.s.PGSQL.*
    if [ ! -f "$DATA/PG_VERSION" ] || [ ! -f "$DATA/postgresql.conf" ]; then
        init
    fi
    if port_busy; then
        die "port $PORT on 127.0.0.1 is in use by another program (set HASYNC_PG_PORT)"
    fi
    touch "$LOG"
    [ "$(id -u)" -ne 0 ] || chown "$OS_USER": "$LOG"
    # Durability is not wanted from a throwaway server: fsync off makes tests fast.
    if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
        -o "-p $PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$DATA -F -c max_connections=200" \
        >/dev/null; then
        tail -n 20 "$LOG" >&2 || true
        die "the server did not start (log: $LOG)"
    fi
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 10 || die "the server does not answer on 127.0.0.1:$PORT (log: $LOG)"
    url
}

stop() {
    if [ -f "$DATA/PG_VERSION" ]; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DATA" "$LOG"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    env) echo "export HASYNC_TEST_PG_URL='$(start)'" ;;
    status)
        if running; then
            echo "running: $(url | sed 's#://postgres:[^@]*@#://postgres:***@#') data=$DATA"
        else
            echo "not running (data=$DATA)"
            exit 1
        fi
        ;;
    *) echo "usage: $0 start|stop|url|env|status" >&2; exit 2 ;;
esac
