#!/usr/bin/env bash
# Starts and stops the real services the tests need, on 127.0.0.1 with
# throw-away data directories (ports below 32768: the ephemeral range starts
# there and RabbitMQ-style listeners collide with it).
#
#   scripts/services.sh start pg      # prints `export VAXGATE_TEST_PG_URL=...`
#   scripts/services.sh stop          # stops everything this script started
#
# A service already reachable at its URL (VAXGATE_TEST_PG_URL set by the
# caller) is used as it is and not started. State lives in $VAXGATE_SERVICES_DIR
# (default /tmp/vaxgate-services).
set -euo pipefail

DIR=${VAXGATE_SERVICES_DIR:-/tmp/vaxgate-services}
PG_PORT=${VAXGATE_PG_PORT:-15432}
log() { printf '[services] %s\n' "$*" >&2; }

as_root_install() { # as_root_install DEBIAN-PACKAGE...
    if [ "$(id -u)" -ne 0 ]; then
        log "error: need Debian packages $* and this is not root"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bin() {
    local b
    b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$b" ] || [ ! -x "$b/initdb" ]; then
        log "installing postgresql"
        as_root_install postgresql postgresql-client
        b=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    echo "$b"
}

start_pg() {
    if [ -n "${VAXGATE_TEST_PG_URL:-}" ]; then
        log "using PostgreSQL at the given VAXGATE_TEST_PG_URL"
        echo "export VAXGATE_TEST_PG_URL='$VAXGATE_TEST_PG_URL'"
        return
    fi
    local bin; bin=$(pg_bin)
    local d="$DIR/pg"
    if [ -f "$d/data/postmaster.pid" ] && kill -0 "$(head -1 "$d/data/postmaster.pid")" 2>/dev/null; then
        log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    else
        rm -rf "$d"
        install -d -o postgres -g postgres "$d"
        runuser -u postgres -- "$bin/initdb" -D "$d/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >"$d/initdb.log"
        # fsync off: throw-away test data; durability of the code under test is
        # exercised on SQLite and by the kill tests, not by this server's disk.
        runuser -u postgres -- "$bin/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 30 \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $d -c fsync=off -c full_page_writes=off -c max_connections=200" start >/dev/null
        log "PostgreSQL started on 127.0.0.1:$PG_PORT (data in $d)"
    fi
    echo "export VAXGATE_TEST_PG_URL='postgres://postgres@127.0.0.1:$PG_PORT/postgres'"
}

stop_pg() {
    local d="$DIR/pg"
    [ -f "$d/data/postmaster.pid" ] || return 0
    local bin; bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    runuser -u postgres -- "$bin/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null || true
    rm -rf "$d"
    log "PostgreSQL stopped"
}

case "${1:-}" in
    start)
        shift
        mkdir -p "$DIR"
        # Services run as their own users (postgres); they must reach their folders.
        chmod 755 "$DIR"
        for s in "$@"; do
            case "$s" in
                pg) start_pg ;;
                *) log "unknown service $s (known: pg)"; exit 2 ;;
            esac
        done
        ;;
    stop)
        stop_pg
        ;;
    *)
        echo "usage: $0 start pg | stop" >&2
        exit 2
        ;;
esac
