#!/usr/bin/env bash
# Runs `vaxgate bench crypto` and `openssl speed` side by side on this
# machine and prints vaxgate/OpenSSL ratios against the targets of issue 2:
#   SM3 >= 1.0x, SM2 verify >= 1.0x, SM4 >= 0.75x (CBC and CTR).
#
# usage: scripts/bench-crypto.sh [SECONDS]        (default 3 per figure)
#   VAXGATE=path/to/vaxgate   the binary (default: target/release/vaxgate,
#                             or $CARGO_TARGET_DIR/release/vaxgate)
# Build first: cargo build --release -p gateway
# Both sides run single-threaded over 8192-byte buffers; MB = 10^6 bytes.
set -euo pipefail

secs=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
vaxgate=${VAXGATE:-${CARGO_TARGET_DIR:-$root/target}/release/vaxgate}
[[ -x "$vaxgate" ]] || { echo "error: $vaxgate not found; run: cargo build --release -p gateway (or set VAXGATE)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "error: openssl not found in PATH" >&2; exit 1; }

echo "== $(openssl version)"
echo "== $("$vaxgate" --version)  ($vaxgate)"
echo "== $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

json=$("$vaxgate" bench crypto --seconds "$secs" | tee /dev/stderr | tail -n 1)
echo

# field NAME from vaxgate's final JSON line
vx() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" <<<"$json"; }

# openssl speed -mr: "+F:<n>:<alg>:<bytes/s>" for ciphers/digests,
# "+F7:<n>:<bits>:<curve>:<sign/s>:<verify/s>" for SM2.
evp_mb() {
  openssl speed -mr -seconds "$secs" -bytes 8192 -evp "$1" 2>/dev/null |
    awk -F: '/^\+F:/ { printf "%.1f", $4 / 1e6 }'
}
o_sm3=$(evp_mb sm3)
o_cbc=$(evp_mb sm4-cbc)
o_ctr=$(evp_mb sm4-ctr)
read -r o_sign o_verify < <(openssl speed -mr -seconds "$secs" sm2 2>/dev/null |
  awk -F: '/^\+F7:/ { printf "%.1f %.1f\n", $5, $6 }')

row() { # label vaxgate openssl target unit
  awk -v l="$1" -v v="$2" -v o="$3" -v t="$4" -v u="$5" 'BEGIN {
    r = (o > 0) ? v / o : 0
    verdict = (t == "-") ? "" : ((r >= t) ? "meets " t "x" : "BELOW " t "x")
    printf "%-16s %12.1f %12.1f %-6s %7.2fx  %s\n", l, v, o, u, r, verdict }'
}
printf "%-16s %12s %12s %-6s %8s  %s\n" "figure" "vaxgate" "openssl" "unit" "ratio" "target"
row "sm3"        "$(vx sm3_mb_s)"         "$o_sm3"    1.0  "MB/s"
row "sm2 verify" "$(vx sm2_verify_per_s)" "$o_verify" 1.0  "op/s"
row "sm2 sign"   "$(vx sm2_sign_per_s)"   "$o_sign"   -    "op/s"
row "sm4-cbc"    "$(vx sm4_cbc_mb_s)"     "$o_cbc"    0.75 "MB/s"
row "sm4-ctr"    "$(vx sm4_ctr_mb_s)"     "$o_ctr"    0.75 "MB/s"
echo "(openssl 3.0 has no sm4-gcm in 'speed'; vaxgate sm4-gcm: $(vx sm4_gcm_mb_s) MB/s)"

ratio() { awk -v v="$1" -v o="$2" 'BEGIN { printf "%.3f", (o > 0) ? v / o : 0 }'; }
printf '{"seconds":%s,"openssl":{"sm3_mb_s":%s,"sm2_sign_per_s":%s,"sm2_verify_per_s":%s,"sm4_cbc_mb_s":%s,"sm4_ctr_mb_s":%s},"vaxgate":%s,"ratio":{"sm3":%s,"sm2_verify":%s,"sm2_sign":%s,"sm4_cbc":%s,"sm4_ctr":%s}}\n' \
  "$secs" "$o_sm3" "$o_sign" "$o_verify" "$o_cbc" "$o_ctr" "$json" \
  "$(ratio "$(vx sm3_mb_s)" "$o_sm3")" "$(ratio "$(vx sm2_verify_per_s)" "$o_verify")" \
  "$(ratio "$(vx sm2_sign_per_s)" "$o_sign")" "$(ratio "$(vx sm4_cbc_mb_s)" "$o_cbc")" \
  "$(ratio "$(vx sm4_ctr_mb_s)" "$o_ctr")"
