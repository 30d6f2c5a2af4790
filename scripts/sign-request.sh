#!/usr/bin/env bash
# Sends one SM2-signed request to a vaxgate gateway with nothing but curl,
# the openssl 3 CLI and coreutils. The scheme is docs/request-signing.md.
#
#   scripts/sign-request.sh [options] KEY.pem METHOD URL [BODY_FILE]
#
# KEY.pem is the signer's PKCS#8 private key (as `vaxgate keys generate`
# writes it: encrypted, so pass --passphrase-env; or a plain test key).
# The body is sent byte for byte from BODY_FILE (empty when absent). The
# response body goes to stdout; an HTTP error status exits non-zero
# (curl --fail-with-body: exit 22, the error JSON still printed).
#
# Options:
#   --ca FILE              trust this CA certificate (PEM), e.g. the gateway's
#                          self-signed tls/server.crt.pem
#   --passphrase-env NAME  environment variable holding the key's passphrase
#                          (handed to openssl as -passin env:NAME; the value
#                          never appears on a command line)
#   --content-type TYPE    Content-Type of a body (default application/json)
#   --headers-out FILE     also write the five x-vaxgate-* headers to FILE,
#                          one "name: value" per line (curl -H @FILE reads it)
#   --dry-run              print the five headers to stdout, send nothing
#   --verbose              print the canonical string to stderr
#   --timestamp SECONDS    use this timestamp instead of `date +%s`, and
#   --nonce NONCE          this nonce instead of `openssl rand -hex 16`
#                          (only to reproduce the worked example; a reused
#                          nonce is refused by the gateway)
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "sign-request.sh: $*" >&2
    exit 2
}

ca=
pass_env=
content_type=application/json
headers_out=
dry_run=0
verbose=0
timestamp=
nonce=
while [ $# -gt 0 ]; do
    case $1 in
        --ca) [ $# -ge 2 ] || die "--ca needs a file"; ca=$2; shift 2 ;;
        --passphrase-env) [ $# -ge 2 ] || die "--passphrase-env needs a name"; pass_env=$2; shift 2 ;;
        --content-type) [ $# -ge 2 ] || die "--content-type needs a value"; content_type=$2; shift 2 ;;
        --headers-out) [ $# -ge 2 ] || die "--headers-out needs a file"; headers_out=$2; shift 2 ;;
        --timestamp) [ $# -ge 2 ] || die "--timestamp needs a value"; timestamp=$2; shift 2 ;;
        --nonce) [ $# -ge 2 ] || die "--nonce needs a value"; nonce=$2; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        --verbose) verbose=1; shift ;;
        -h | --help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 3 ] && [ $# -le 4 ] || usage
key=$1
method=$(printf '%s' "$2" | tr '[:lower:]' '[:upper:]')
url=$3
body=${4:-}

command -v openssl >/dev/null 2>&1 || die "openssl (3.0 or later) is not in PATH"
[ "$dry_run" = 1 ] || command -v curl >/dev/null 2>&1 || die "curl is not in PATH"
[ -r "$key" ] || die "cannot read the key file $key"
[ -z "$body" ] || [ -r "$body" ] || die "cannot read the body file $body"
[ -z "$ca" ] || [ -r "$ca" ] || die "cannot read the CA file $ca"
case $method in *[!A-Z]* | '') die "bad method '$2'" ;; esac
if [ -n "$pass_env" ]; then
    [ -n "${!pass_env:-}" ] || die "environment variable $pass_env is not set or empty"
    passin=(-passin "env:$pass_env")
else
    passin=()
fi

# Path and query exactly as curl sends them (--path-as-is keeps dot
# segments; the fragment is never sent).
case $url in
    http://* | https://*) ;;
    *) die "the URL must start with http:// or https://" ;;
esac
rest=${url#*://}
rest=${rest%%#*}
case $rest in
    */*) path=/${rest#*/} ;;
    *\?*) path=/?${rest#*\?} ;;
    *) path=/ ;;
esac
case $path in *[[:space:]]*) die "the URL must be percent-encoded (it contains white space)" ;; esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sign-request.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# 1. Key id: the first 16 bytes of SM3 over the 65-byte uncompressed point,
#    which ends the DER SubjectPublicKeyInfo.
key_id=$(openssl pkey -in "$key" "${passin[@]}" -pubout -outform DER | tail -c 65 |
    openssl dgst -sm3 -r | cut -c1-32) || key_id=
[ ${#key_id} = 32 ] || die "cannot derive the key id from $key (wrong passphrase, or not an SM2 key?)"

# 2. SM3 of the body, lowercase hex.
if [ -n "$body" ]; then
    content_sm3=$(openssl dgst -sm3 -r <"$body" | cut -c1-64)
else
    content_sm3=$(openssl dgst -sm3 -r </dev/null | cut -c1-64)
fi

# 3. Timestamp and nonce.
timestamp=${timestamp:-$(date +%s)}
nonce=${nonce:-$(openssl rand -hex 16)}

# 4. The canonical string: seven lines, no trailing newline.
printf 'VAXGATE-SM2-SM3-V1\n%s\n%s\n%s\n%s\n%s\n%s' \
    "$method" "$path" "$key_id" "$timestamp" "$nonce" "$content_sm3" >"$tmp/canonical"
if [ "$verbose" = 1 ]; then
    { cat "$tmp/canonical"; echo; } >&2
fi

# 5. SM2 signature with SM3 and the distinguishing ID, DER, then base64.
openssl pkeyutl -sign -inkey "$key" "${passin[@]}" -rawin -digest sm3 \
    -pkeyopt distid:1234567812345678 -in "$tmp/canonical" -out "$tmp/sig.der" ||
    die "openssl could not sign with $key"
signature=$(openssl base64 -A -in "$tmp/sig.der")

cat >"$tmp/headers" <<EOF
x-vaxgate-key-id: $key_id
x-vaxgate-timestamp: $timestamp
x-vaxgate-nonce: $nonce
x-vaxgate-content-sm3: $content_sm3
x-vaxgate-signature: $signature
EOF
[ -z "$headers_out" ] || cp "$tmp/headers" "$headers_out"
if [ "$dry_run" = 1 ]; then
    cat "$tmp/headers"
    exit 0
fi

# 6. Send it.
args=(--silent --show-error --fail-with-body --path-as-is -X "$method" -H "@$tmp/headers")
[ -z "$ca" ] || args+=(--cacert "$ca")
if [ -n "$body" ]; then
    args+=(-H "content-type: $content_type" --data-binary "@$body")
fi
curl "${args[@]}" -- "$url"
