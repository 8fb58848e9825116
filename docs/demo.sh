#!/usr/bin/env bash
# The end-to-end demo on SoftHSM2, run by `make demo`.
#
# It works in .demo/ with its own freshly made tokens, so it can be run again
# and never touches the development tokens in .softhsm/. Each step is a vault
# command a user would type.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="$root/.demo"
rm -rf "$work"
mkdir -p "$work"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Fresh SoftHSM2 tokens for the demo"
bash "$root/softhsm/setup.sh" --dir "$work/softhsm" --quiet
# shellcheck disable=SC1091
source "$work/softhsm/env"
vault token list

pin="file:$work/softhsm/pins/vault-root.pin"
key="pkcs11:token=vault-root;object=demo-release-signer?pin-source=$pin"

step "Generate a P-256 key inside the vault-root token (non-extractable, sensitive)"
vault token keygen "$key"

step "Sign a firmware image with it; the private key never leaves the token"
head -c 1048576 /dev/urandom > "$work/firmware.bin"
vault token sign "$key" "$work/firmware.bin" -o "$work/firmware.sig"
vault token pubkey "$key" -o "$work/release-signer.pem"

step "Verify the signature in software (OpenSSL), with only the public key"
openssl dgst -sha256 -verify "$work/release-signer.pem" -signature "$work/firmware.sig" "$work/firmware.bin"

step "What the token holds (no key material is ever shown)"
vault token keys "pkcs11:token=vault-root?pin-source=$pin"

step "Demo complete: outputs are in .demo/"
