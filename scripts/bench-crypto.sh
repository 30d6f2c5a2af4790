#!/usr/bin/env bash
# Runs `vaxgate bench crypto` and `openssl speed` side by side on this
# machine and prints vaxgate/OpenSSL ratios against the targets of issue 2:
#   SM3 >= 1.0x, SM2 verify >= 1.0x, SM4 >= 0.75x (CBC and CTR).
#
# usage: scripts/bench-crypto.sh [SECONDS] [ROUNDS]   (defaults 3 and 3)
#   VAXGATE=path/to/vaxgate   the binary (default: target/release/vaxgate,
#                             or $CARGO_TARGET_DIR/release/vaxgate)
# Build first: cargo build --release --bin vaxgate
# Both sides run single-threaded over 8192-byte buffers; MB = 10^6 bytes.
# The machine is shared, so the two sides alternate for ROUNDS rounds and each
# figure is the best of its rounds (the least-disturbed measurement).
set -euo pipefail

secs=${1:-3}
rounds=${2:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
vaxgate=${VAXGATE:-${CARGO_TARGET_DIR:-$root/target}/release/vaxgate}
[[ -x "$vaxgate" ]] || { echo "error: $vaxgate not found; run: cargo build --release --bin vaxgate (or set VAXGATE)" >&2; exit 1; }
command -v openssl >/dev/null || { echo "error: openssl not found in PATH" >&2; exit 1; }

echo "== $(openssl version)"
echo "== $("$vaxgate" --version)  ($vaxgate)"
echo "== $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo

# field NAME from a vaxgate JSON line
field() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" <<<"$2"; }
max() { awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { printf "%.1f", (a > b) ? a : b }'; }

# openssl speed -mr: "+F:<n>:<alg>:<bytes/s>" for ciphers/digests,
# "+F7:<n>:<bits>:<curve>:<sign/s>:<verify/s>" for SM2.
evp_mb() {
  openssl speed -mr -seconds "$secs" -bytes 8192 -evp "$1" 2>/dev/null |
    awk -F: '/^\+F:/ { printf "%.1f", $4 / 1e6 }'
}

vx_fields="sm3_mb_s sm2_sign_per_s sm2_verify_per_s sm2_encrypt_per_s sm2_decrypt_per_s sm4_cbc_mb_s sm4_ctr_mb_s sm4_gcm_mb_s envelope_seal_per_s envelope_open_per_s"
declare -A best
for r in $(seq "$rounds"); do
  echo "-- round $r/$rounds: vaxgate bench crypto --seconds $secs"
  line=$("$vaxgate" bench crypto --seconds "$secs" | tail -n 1)
  echo "   $line"
  for f in $vx_fields; do best[$f]=$(max "${best[$f]:-0}" "$(field "$f" "$line")"); done
  echo "-- round $r/$rounds: openssl speed -seconds $secs (sm3, sm4-cbc, sm4-ctr, sm2)"
  o=$(evp_mb sm3); best[o_sm3]=$(max "${best[o_sm3]:-0}" "$o")
  o=$(evp_mb sm4-cbc); best[o_cbc]=$(max "${best[o_cbc]:-0}" "$o")
  o=$(evp_mb sm4-ctr); best[o_ctr]=$(max "${best[o_ctr]:-0}" "$o")
  read -r o_sign o_verify < <(openssl speed -mr -seconds "$secs" sm2 2>/dev/null |
    awk -F: '/^\+F7:/ { printf "%.1f %.1f\n", $5, $6 }')
  best[o_sign]=$(max "${best[o_sign]:-0}" "$o_sign")
  best[o_verify]=$(max "${best[o_verify]:-0}" "$o_verify")
  echo "   openssl: sm2 sign $o_sign/s verify $o_verify/s (best so far: sm3 ${best[o_sm3]}, sm4-cbc ${best[o_cbc]}, sm4-ctr ${best[o_ctr]} MB/s)"
done
echo
vx() { echo "${best[$1]}"; }
o_sm3=${best[o_sm3]} o_cbc=${best[o_cbc]} o_ctr=${best[o_ctr]} o_sign=${best[o_sign]} o_verify=${best[o_verify]}
json="{"
for f in $vx_fields; do json+="\"$f\":${best[$f]},"; done
json="${json%,}}"

echo "best of $rounds rounds, $secs s per figure:"
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
echo "(openssl 3.0 has no sm4-gcm; vaxgate also: sm4-gcm $(vx sm4_gcm_mb_s) MB/s, sm2 encrypt $(vx sm2_encrypt_per_s)/s,"
echo " sm2 decrypt $(vx sm2_decrypt_per_s)/s, envelope seal $(vx envelope_seal_per_s)/s, open $(vx envelope_open_per_s)/s for 1 KiB)"

ratio() { awk -v v="$1" -v o="$2" 'BEGIN { printf "%.3f", (o > 0) ? v / o : 0 }'; }
printf '{"seconds":%s,"rounds":%s,"openssl":{"sm3_mb_s":%s,"sm2_sign_per_s":%s,"sm2_verify_per_s":%s,"sm4_cbc_mb_s":%s,"sm4_ctr_mb_s":%s},"vaxgate":%s,"ratio":{"sm3":%s,"sm2_verify":%s,"sm2_sign":%s,"sm4_cbc":%s,"sm4_ctr":%s}}\n' \
  "$secs" "$rounds" "$o_sm3" "$o_sign" "$o_verify" "$o_cbc" "$o_ctr" "$json" \
  "$(ratio "$(vx sm3_mb_s)" "$o_sm3")" "$(ratio "$(vx sm2_verify_per_s)" "$o_verify")" \
  "$(ratio "$(vx sm2_sign_per_s)" "$o_sign")" "$(ratio "$(vx sm4_cbc_mb_s)" "$o_cbc")" \
  "$(ratio "$(vx sm4_ctr_mb_s)" "$o_ctr")"
