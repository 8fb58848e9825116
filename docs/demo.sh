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

pins="$work/softhsm/pins"
cat > "$work/credentials.yaml" <<CREDS
root: "pkcs11:token=vault-root?pin-source=file:$pins/vault-root.pin"
officers:
  officer-1: "pkcs11:token=vault-officer-1?pin-source=file:$pins/vault-officer-1.pin"
  officer-2: "pkcs11:token=vault-officer-2?pin-source=file:$pins/vault-officer-2.pin"
  officer-3: "pkcs11:token=vault-officer-3?pin-source=file:$pins/vault-officer-3.pin"
CREDS

step "Root key ceremony (rehearsal): root key and CA, trust policy v1, root PIN split 2 of 3"
vault ceremony run "$root/policies/root-ceremony.yaml" --credentials "$work/credentials.yaml" \
  --out "$work/ceremony-root" --rehearsal --yes

step "Anyone can verify the signed, hash-chained transcript against the pinned root"
vault ceremony verify "$work/ceremony-root/transcript.json" --root-cert "$work/ceremony-root/root-ca.pem"
openssl x509 -in "$work/ceremony-root/root-ca.pem" -noout -subject -enddate

step "Each custodian proves their share without revealing the root PIN"
for i in 1 2 3; do
  vault shares check "$work/ceremony-root/transcript.json" --share "$work/ceremony-root/shares/officer-$i.txt"
done

pin="file:$pins/vault-station-1.pin"
key="pkcs11:token=vault-station-1;object=demo-signing-key?pin-source=$pin"

step "Generate a P-256 key inside the vault-station-1 token (non-extractable, sensitive)"
vault token keygen "$key"

step "Sign a firmware image with it; the private key never leaves the token"
head -c 1048576 /dev/urandom > "$work/firmware.bin"
vault token sign "$key" "$work/firmware.bin" -o "$work/firmware.sig"
vault token pubkey "$key" -o "$work/release-signer.pem"

step "Verify the signature in software (OpenSSL), with only the public key"
openssl dgst -sha256 -verify "$work/release-signer.pem" -signature "$work/firmware.sig" "$work/firmware.bin"

step "What the token holds (no key material is ever shown)"
vault token keys "pkcs11:token=vault-station-1?pin-source=$pin"

step "Demo complete: outputs are in .demo/ (printable transcript: .demo/ceremony-root/transcript.html)"
