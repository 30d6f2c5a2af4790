#!/usr/bin/env bash
# Backfill throughput of the agent: PostgreSQL -> vaxgate agent -> vaxgate serve
# on this machine (release build). Prints a final JSON line.
#
#   PG_URL=postgres://postgres@127.0.0.1:15432/postgres ROWS=200000 scripts/bench-agent.sh
#
# Creates a throw-away node (plain HTTP on loopback), the clinic entity, a
# fresh PostgreSQL database with ROWS rows of T_JZ_JZJL (config/mappings/
# README.md, quoted upper-case legacy schema), then times
# `vaxgate agent run --once` from an empty checkpoint to caught up.
set -euo pipefail
cd "$(dirname "$0")/.."
PG_URL=${PG_URL:-${VAXGATE_TEST_PG_URL:-postgres://postgres@127.0.0.1:15432/postgres}}
ROWS=${ROWS:-200000}
BATCH=${BATCH:-2000}
IN_FLIGHT=${IN_FLIGHT:-2}
BIN=${BIN:-target/release/vaxgate}
[ -x "$BIN" ] || cargo build --release --bin vaxgate
export VAXGATE_BENCH_PASS="bench passphrase" VAXGATE_AGENT_PASSPHRASE="bench passphrase"
WORK=$(mktemp -d /tmp/vaxgate-bench-agent.XXXXXX)
SERVER_PID=
# KEEP=1 keeps the work directory (node, ledger, agent state) for inspection.
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" init --dir "$WORK/node" --plain-http --listen "127.0.0.1:$PORT" --passphrase-env VAXGATE_BENCH_PASS >/dev/null
RUST_LOG=${SERVER_LOG:-warn} "$BIN" serve --config "$WORK/node/vaxgate.toml" >/dev/null 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
ID=12320102MB12345674
"$BIN" keys generate --out "$WORK/keys" --entity clinic --passphrase-env VAXGATE_BENCH_PASS >/dev/null
"$BIN" admin --gateway "http://127.0.0.1:$PORT" --passphrase-env VAXGATE_BENCH_PASS register-entity \
  --id $ID --name 梅园社区卫生服务中心 --alias meiyuan --role vaccination_unit --code 3201020001 \
  --master-key "$WORK/keys/clinic.pub.pem" \
  --approve "$WORK/node/keys/admin-1.key.pem" --approve "$WORK/node/keys/admin-2.key.pem" >/dev/null
DB=bench_agent_$$
psql "$PG_URL" -qc "CREATE DATABASE $DB" >/dev/null
DB_URL="${PG_URL%/*}/$DB"
psql "$DB_URL" -q <<SQL >/dev/null
CREATE TABLE "T_JZ_JZJL" ("JZJL_ID" TEXT PRIMARY KEY, "SZZBM" TEXT, "SZZ_XM" TEXT, "SZZ_XB" TEXT, "CSRQ" TEXT,
  "ZJLX" TEXT, "ZJHM" TEXT, "LXDH" TEXT, "JTZZ" TEXT, "JHR_XM" TEXT, "YMBM" TEXT, "YMMC" TEXT, "JC" TEXT,
  "YMPH" TEXT, "YXQ" TEXT, "DZJGM" TEXT, "JZRQ" TEXT, "JZBW" TEXT, "JZTJ" TEXT, "JZYS" TEXT, "JZDW_BM" TEXT,
  "JZDW_MC" TEXT, "SCQY_BM" TEXT, "SCQY_MC" TEXT, "JL" TEXT, "BZJC" INTEGER, "SJLY" TEXT);
INSERT INTO "T_JZ_JZJL"
SELECT 'JZ' || lpad(i::text, 10, '0'), '320102000120' || lpad((i % 1000000)::text, 6, '0'), '王小明',
       CASE i % 2 WHEN 0 THEN '男' ELSE '女' END, '2023/01/15', '2', '320102202301150028', '13812345678',
       '江苏省南京市玄武区中山路1号', '王大伟', '0201', '乙肝疫苗(酿酒酵母)', (i % 3 + 1)::text, '202311a05',
       '2026/11/30', '8612345' || lpad(i::text, 13, '0'),
       to_char(TIMESTAMP '2024-03-05 08:00:00' + (i / 7) * INTERVAL '1 second', 'YYYYMMDDHH24MISS'),
       'SX0504_1', 'SX0507_1', '李医生', '3201020001', '玄武区梅园社区卫生服务中心预防接种门诊', 'SZ01',
       '深圳康泰生物制品股份有限公司', '0.5', 1, '1'
FROM generate_series(0, $ROWS - 1) AS i;
SQL
# The keyset query orders by (watermark, key): with an index on them each
# page is an index range scan; without (INDEX=0) each page scans and sorts
# the table (docs/sources.md; `vaxgate agent check` warns about it).
if [ "${INDEX:-1}" = 1 ]; then
    psql "$DB_URL" -qc 'CREATE INDEX "T_JZ_JZJL_JZRQ" ON "T_JZ_JZJL" ("JZRQ", "JZJL_ID")' >/dev/null
fi
cat > "$WORK/agent.toml" <<TOML
[agent]
entity_id = "$ID"
key = "$WORK/keys/clinic.key.pem"
state_db = "$WORK/agent-state.db"
[gateway]
url = "http://127.0.0.1:$PORT"
node_key = "$WORK/node/keys/node.pub.pem"
[[sources]]
type = "postgres"
name = "clinic-ims"
mapping = "$PWD/config/mappings/clinic-ims.toml"
url = "$DB_URL"
table = "T_JZ_JZJL"
watermark = "JZRQ"
key = "JZJL_ID"
batch_size = $BATCH
in_flight = $IN_FLIGHT
TOML
START=$(date +%s.%N)
OUT=$(RUST_LOG=${AGENT_LOG:-warn} "$BIN" agent --config "$WORK/agent.toml" run --once)
END=$(date +%s.%N)
psql "$PG_URL" -qc "DROP DATABASE $DB" >/dev/null
echo "$OUT" >&2
ACCEPTED=$(echo "$OUT" | sed -n 's/^source clinic-ims: \([0-9]*\) accepted.*/\1/p')
[ "$ACCEPTED" = "$ROWS" ] || { echo "expected $ROWS accepted, got '$ACCEPTED'" >&2; exit 1; }
python3 -c "import json; s=$END-$START; print(json.dumps({'bench':'agent_backfill_postgres','rows':$ROWS,'batch_size':$BATCH,'in_flight':$IN_FLIGHT,'seconds':round(s,2),'rows_per_s':round($ROWS/s)}))"
