#!/usr/bin/env bash
# The whole test suite, as CI runs it: `./scripts/test.sh`.
#
# 1. Installs what the tests need that a fresh machine may lack (the openssl
#    CLI for the SM2/SM3/SM4 interop tests, libssl-dev for the OpenSSL
#    crypto provider) and starts throw-away
#    PostgreSQL, MariaDB and RabbitMQ on 127.0.0.1 (scripts/services.sh),
#    stopped on exit.
# 2. Checks formatting and clippy (warnings are errors).
# 3. Runs every test of the workspace, including the end-to-end tests of the
#    built binary in tests/.
#
# Tests that need a service fail loudly when it is missing; none skip.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

need_pkg() { # need_pkg COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    step "installing $2 (for $1)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1 is missing and this is not root; install the Debian package $2" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

need_pkg openssl openssl
need_pkg curl curl
# The OpenSSL crypto provider links the system libssl3 (secure-gateway/src/openssl_provider.rs).
need_pkg pkg-config pkg-config
pkg-config --exists openssl || need_pkg no-such-command-libssl libssl-dev

# Real services for the integration tests, stopped again however we exit.
# A service already given by URL (e.g. VAXGATE_TEST_PG_URL) is used as is.
export VAXGATE_SERVICES_DIR=${VAXGATE_SERVICES_DIR:-$(mktemp -d /tmp/vaxgate-services.XXXXXX)}
trap 'scripts/services.sh stop' EXIT
step "starting PostgreSQL, MariaDB, RabbitMQ"
svc_env=$(scripts/services.sh start pg mariadb rabbitmq)   # a failed start stops the run here
eval "$svc_env"

# An HL7 MLLP client nobody here wrote, for adapters/tests/hl7_mllp.rs: the
# PyPI `hl7` package's `mllp_send`, in a venv (idempotent; pip reaches PyPI).
if [ -z "${VAXGATE_MLLP_SEND:-}" ]; then
    if [ ! -x /tmp/vaxgate-py/bin/mllp_send ]; then
        step "installing the PyPI hl7 package (mllp_send) in /tmp/vaxgate-py"
        python3 -c 'import ensurepip' 2>/dev/null || need_pkg no-such-command-venv python3-venv
        python3 -m venv /tmp/vaxgate-py
        /tmp/vaxgate-py/bin/pip install -q hl7
    fi
    export VAXGATE_MLLP_SEND=/tmp/vaxgate-py/bin/mllp_send
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "done in $(( $(date +%s) - started ))s"
