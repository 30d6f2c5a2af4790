#!/usr/bin/env bash
# Starts and stops the real services the tests need, on 127.0.0.1 with
# throw-away data directories (ports below 32768: the ephemeral range starts
# there and RabbitMQ-style listeners collide with it).
#
#   scripts/services.sh start pg mariadb rabbitmq
#       prints `export VAXGATE_TEST_PG_URL=...`, `VAXGATE_TEST_MYSQL_URL=...`,
#       `VAXGATE_TEST_AMQP_URL=...` for eval
#   scripts/services.sh stop          # stops everything this script started
#
# A service already reachable at its URL (the variable set by the caller) is
# used as it is and not started. Debian packages are installed when missing
# (PostgreSQL is usually preinstalled; MariaDB ~25 s, RabbitMQ ~8 s). State lives in $VAXGATE_SERVICES_DIR
# (default /tmp/vaxgate-services).
set -euo pipefail

DIR=${VAXGATE_SERVICES_DIR:-/tmp/vaxgate-services}
PG_PORT=${VAXGATE_PG_PORT:-15432}
MY_PORT=${VAXGATE_MYSQL_PORT:-13306}
AMQP_PORT=${VAXGATE_AMQP_PORT:-25672}
EPMD_PORT=${VAXGATE_EPMD_PORT:-24369}
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

start_mariadb() {
    if [ -n "${VAXGATE_TEST_MYSQL_URL:-}" ]; then
        log "using MariaDB at the given VAXGATE_TEST_MYSQL_URL"
        echo "export VAXGATE_TEST_MYSQL_URL='$VAXGATE_TEST_MYSQL_URL'"
        return
    fi
    command -v mariadbd >/dev/null 2>&1 || { log "installing mariadb-server"; as_root_install mariadb-server mariadb-client; }
    local d="$DIR/my"
    if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
        log "MariaDB already running on 127.0.0.1:$MY_PORT"
    else
        rm -rf "$d"; mkdir -p "$d"
        mariadb-install-db --no-defaults --datadir="$d/data" --user=root --auth-root-authentication-method=normal \
            --skip-test-db >"$d/install.log" 2>&1
        mariadbd --no-defaults --datadir="$d/data" --socket="$d/sock" --port="$MY_PORT" --bind-address=127.0.0.1 \
            --user=root --pid-file="$d/pid" --log-error="$d/err.log" --skip-name-resolve \
            --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 --max-connections=300 >/dev/null 2>&1 &
        local i
        for i in $(seq 150); do
            mariadb-admin --no-defaults -S "$d/sock" -u root ping >/dev/null 2>&1 && break
            sleep 0.2
        done
        mariadb-admin --no-defaults -S "$d/sock" -u root ping >/dev/null 2>&1 \
            || { log "error: MariaDB did not start; see $d/err.log"; tail -20 "$d/err.log" >&2; exit 1; }
        mariadb --no-defaults -S "$d/sock" -u root -e "CREATE DATABASE test; \
            CREATE USER 'test'@'127.0.0.1' IDENTIFIED BY 'test'; GRANT ALL ON *.* TO 'test'@'127.0.0.1';"
        log "MariaDB started on 127.0.0.1:$MY_PORT (data in $d)"
    fi
    echo "export VAXGATE_TEST_MYSQL_URL='mysql://test:test@127.0.0.1:$MY_PORT/test'"
}

stop_mariadb() {
    local d="$DIR/my"
    [ -f "$d/pid" ] || return 0
    local pid; pid=$(cat "$d/pid")
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -rf "$d"
    log "MariaDB stopped"
}

rmq_env() {
    local d="$DIR/rmq"
    export HOME="$d" RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT=$((AMQP_PORT + 1)) RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq" ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$EPMD_PORT" \
        SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

start_rabbitmq() {
    if [ -n "${VAXGATE_TEST_AMQP_URL:-}" ]; then
        log "using RabbitMQ at the given VAXGATE_TEST_AMQP_URL"
        echo "export VAXGATE_TEST_AMQP_URL='$VAXGATE_TEST_AMQP_URL'"
        return
    fi
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { log "installing rabbitmq-server"; as_root_install rabbitmq-server; }
    local d="$DIR/rmq"
    if [ -f "$d/server.pid" ] && kill -0 "$(cat "$d/server.pid")" 2>/dev/null; then
        log "RabbitMQ already running on 127.0.0.1:$AMQP_PORT"
    else
        rm -rf "$d"; mkdir -p "$d"
        (
            rmq_env
            echo '[].' >"$d/enabled_plugins"
            echo 'loopback_users = none' >"$d/rabbitmq.conf"
            epmd -address 127.0.0.1 -port "$EPMD_PORT" >/dev/null 2>&1 &
            echo $! >"$d/epmd.pid"
            /usr/lib/rabbitmq/bin/rabbitmq-server >"$d/server.out" 2>&1 &
            echo $! >"$d/server.pid"
            local i
            for i in $(seq 120); do
                /usr/lib/rabbitmq/bin/rabbitmqctl -q -n rabbit@localhost await_startup --timeout 30 >/dev/null 2>&1 && exit 0
                kill -0 "$(cat "$d/server.pid")" 2>/dev/null || break
                sleep 0.5
            done
            exit 1
        ) || { log "error: RabbitMQ did not start; see $d/server.out"; tail -20 "$d/server.out" >&2; exit 1; }
        log "RabbitMQ started on 127.0.0.1:$AMQP_PORT (data in $d)"
    fi
    echo "export VAXGATE_TEST_AMQP_URL='amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f'"
}

stop_rabbitmq() {
    local d="$DIR/rmq"
    [ -f "$d/server.pid" ] || return 0
    (
        rmq_env
        /usr/lib/rabbitmq/bin/rabbitmqctl -q -n rabbit@localhost stop >/dev/null 2>&1 || kill -TERM "$(cat "$d/server.pid")" 2>/dev/null || true
        kill "$(cat "$d/epmd.pid")" 2>/dev/null || true
    )
    rm -rf "$d"
    log "RabbitMQ stopped"
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
                mariadb) start_mariadb ;;
                rabbitmq) start_rabbitmq ;;
                *) log "unknown service $s (known: pg mariadb rabbitmq)"; exit 2 ;;
            esac
        done
        ;;
    stop)
        stop_rabbitmq
        stop_mariadb
        stop_pg
        ;;
    *)
        echo "usage: $0 start pg|mariadb|rabbitmq... | stop" >&2
        exit 2
        ;;
esac
