#!/usr/bin/env bash
# A plain bot: trade a workload token for a certificate that lives minutes, run
# one ssh command with it, and leave no key behind.
#
#   MAYFLY_SERVER=https://ca.example.com TOKEN_FILE=/run/bot/token \
#     ./bot.sh deploy@app1.example.com uptime
#
# TOKEN_FILE is a JWT that something else keeps fresh (a Kubernetes projected
# token, a file written by your identity agent); the CA checks it against the
# issuer and claims of the role. Arguments are passed to ssh unchanged.
set -euo pipefail

: "${MAYFLY_SERVER:?set MAYFLY_SERVER to the CA, e.g. https://ca.example.com}"
: "${TOKEN_FILE:?set TOKEN_FILE to the file holding the workload token}"
ROLE="${MAYFLY_ROLE:-deploy}"

if [ "$#" -eq 0 ]; then
    echo "usage: $0 [ssh options] user@host [command...]" >&2
    exit 2
fi

# The private key and certificate live in a directory only we can read, and
# are removed however the script ends: success, error (set -e) or a signal.
umask 077
dir="$(mktemp -d "${TMPDIR:-/tmp}/mayfly.XXXXXX")"
trap 'rm -rf -- "$dir"' EXIT
# Turn INT/TERM into a normal exit so the EXIT trap runs.
trap 'exit 130' INT
trap 'exit 143' TERM

mayfly cert --server "$MAYFLY_SERVER" --role "$ROLE" \
    --token-file "$TOKEN_FILE" --out "$dir"

# Not `exec ssh`: the shell must stay to remove the key afterwards.
# IdentitiesOnly: offer only this key, not whatever an ssh-agent holds.
# BatchMode: fail instead of prompting; a bot has nobody to answer.
ssh -i "$dir/id_ed25519" \
    -o CertificateFile="$dir/id_ed25519-cert.pub" \
    -o IdentitiesOnly=yes \
    -o BatchMode=yes \
    "$@"
