#!/usr/bin/env bash
# Writes a local, self-signed TLS set for the demo and the tests:
#   DIR/ca.pem         a throwaway CA (give it to clients: curl --cacert)
#   DIR/cert.pem       a server certificate for localhost / 127.0.0.1,
#                      signed by that CA, with the CA appended (the chain)
#   DIR/key.pem        the server's private key (P-256, PKCS#8, mode 600)
# The CA's key is deleted once the certificate is signed. Never use this
# set outside a laptop or a test: anyone who has the files can be you.
#
# Usage: scripts/tls-selfsigned.sh [DIR]   (default: conf/secrets/tls)
# Needs the openssl command; installs it from the system packages when it
# is missing, and says so.
set -euo pipefail
dir="${1:-conf/secrets/tls}"
if ! command -v openssl >/dev/null 2>&1; then
  echo "tls-selfsigned: installing openssl from the system packages"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq openssl >/dev/null
fi
mkdir -p "$dir"
umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout "$work/ca.key" -out "$dir/ca.pem" -days 30 \
  -subj "/CN=tether local test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout "$work/key.pem" -out "$work/req.csr" -subj "/CN=localhost" 2>/dev/null
cat > "$work/ext.cnf" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
EXT
openssl x509 -req -in "$work/req.csr" -CA "$dir/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -out "$work/leaf.pem" -days 30 -extfile "$work/ext.cnf" 2>/dev/null
cat "$work/leaf.pem" "$dir/ca.pem" > "$dir/cert.pem"
openssl pkcs8 -topk8 -nocrypt -in "$work/key.pem" -out "$dir/key.pem"
chmod 600 "$dir/key.pem"
chmod 644 "$dir/ca.pem" "$dir/cert.pem"
echo "tls-selfsigned: wrote $dir/ca.pem, $dir/cert.pem, $dir/key.pem (valid 30 days)"
