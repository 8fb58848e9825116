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
uri() { echo "pkcs11:token=$1?pin-source=file:$pins/$1.pin"; }
cat > "$work/credentials.yaml" <<CREDS
root: "$(uri vault-root)"
root_so: "pkcs11:token=vault-root?pin-source=file:$pins/vault-root.so-pin"
officers:
  officer-1: "$(uri vault-officer-1)"
  officer-2: "$(uri vault-officer-2)"
  officer-3: "$(uri vault-officer-3)"
release: "$(uri vault-release)"
approvers:
  approver-1: "$(uri vault-approver-1)"
  approver-2: "$(uri vault-approver-2)"
  approver-3: "$(uri vault-approver-3)"
auditor: "$(uri vault-auditor)"
CREDS
# After the root ceremony, two officers are enough: officer-3 stays home.
grep -v officer-3 "$work/credentials.yaml" > "$work/credentials-2.yaml"

step "Root key ceremony (rehearsal): root key and CA, trust policy v1, root PINs split 2 of 3"
vault ceremony run "$root/policies/root-ceremony.yaml" --credentials "$work/credentials.yaml" \
  --out "$work/ceremony-root" --rehearsal --yes

step "Anyone can verify the signed, hash-chained transcript against the pinned root"
vault ceremony verify "$work/ceremony-root/transcript.json" --root-cert "$work/ceremony-root/root-ca.pem"
openssl x509 -in "$work/ceremony-root/root-ca.pem" -noout -subject -enddate

step "Each custodian proves their share without revealing the root PIN (officer-3's is sealed to their token)"
for i in 1 2; do
  vault shares check "$work/ceremony-root/transcript.json" --share "$work/ceremony-root/shares/officer-$i.txt"
done
vault shares check "$work/ceremony-root/transcript.json" --share "$work/ceremony-root/shares/officer-3.sealed.json" \
  --token "$(uri vault-officer-3)"

rootca="$work/ceremony-root/root-ca.pem"
quorum=(--share "$work/ceremony-root/shares/officer-1.txt" --share "$work/ceremony-root/shares/officer-2.txt")

step "Role ceremony (2 of 3 officers): release signer, approvers 2 of 3, auditor, auditor cosigner -> trust policy v2"
vault ceremony run "$root/policies/roles.yaml" --credentials "$work/credentials-2.yaml" \
  --policy "$work/ceremony-root/policy-v1.json" --root-cert "$rootca" "${quorum[@]}" \
  --out "$work/ceremony-roles" --rehearsal --yes

step "The station makes its keys in its own token and writes an enrolment request"
vault station request --token "$(uri vault-station-1)" --station-id station-1 --name "Contract manufacturer line 1" \
  -o "$work/station-1-request.json"

step "Station enrolment ceremony: signing key, decryption key, issuing CA (path length 0) -> trust policy v3"
vault ceremony run "$root/policies/enrol-station.yaml" --credentials "$work/credentials-2.yaml" \
  --policy "$work/ceremony-roles/policy-v2.json" --root-cert "$rootca" "${quorum[@]}" \
  --request "$work/station-1-request.json" --out "$work/ceremony-station-1" --rehearsal --yes
vault ceremony verify "$work/ceremony-station-1/transcript.json" --root-cert "$rootca"

step "A second station asks to be enrolled, and is: trust policy v4"
vault station request --token "$(uri vault-station-2)" --station-id station-2 --name "Contract manufacturer line 2" \
  -o "$work/station-2-request.json"
vault ceremony run "$root/policies/enrol-station.yaml" --credentials "$work/credentials-2.yaml" \
  --policy "$work/ceremony-station-1/policy-v3.json" --root-cert "$rootca" "${quorum[@]}" \
  --request "$work/station-2-request.json" --station-id station-2 --out "$work/ceremony-station-2" --rehearsal --yes
vault policy diff "$work/ceremony-station-1/policy-v3.json" "$work/ceremony-station-2/policy-v4.json" --root-cert "$rootca"
for cert in "$work"/ceremony-roles/certs/*.pem "$work"/ceremony-station-*/certs/*.pem; do
  openssl verify -CAfile "$rootca" "$cert"
done

step "A stale policy is refused: the root token recorded v4, so nobody signs a second v4 from v3"
if vault ceremony run "$root/policies/renew-policy.yaml" --credentials "$work/credentials-2.yaml" \
  --policy "$work/ceremony-station-1/policy-v3.json" --root-cert "$rootca" "${quorum[@]}" \
  --out "$work/ceremony-stale" --rehearsal --yes; then
  echo "demo: a stale policy was accepted" >&2; exit 1
fi
test ! -e "$work/ceremony-stale"

step "Release manager: build an encrypted bundle for both stations (12 and 8 of 20 units)"
mkdir -p "$work/images"
head -c 4194304 /dev/urandom > "$work/images/app.bin"
printf 'serial-prefix=EXD\n' > "$work/images/config.bin"
cat > "$work/release.yaml" <<RELEASE
product: example-sensor
version: 1.4.0
security_counter: 7
not_before: $(date -u +%Y-%m-%dT00:00:00Z)
expires: $(date -u -d '+180 days' +%Y-%m-%dT00:00:00Z)
production:
  total: 20
  allocation: {station-1: 12, station-2: 8}
images:
  - name: app.bin
    path: images/app.bin
    load_address: "0x08000000"
  - name: config.bin
    path: images/config.bin
    partition: config
RELEASE
policy=(--policy "$work/ceremony-station-2/policy-v4.json" --root-cert "$rootca")
vault bundle build "$work/release.yaml" -o "$work/release.vbundle" --log "$work/promotions.log" "${policy[@]}"

step "Approvers inspect it; two of the three approve it in parallel, each from the exported statement alone"
vault bundle inspect "$work/release.vbundle" --export-statement "$work/release.statement.json" "${policy[@]}"
statement=$(vault bundle inspect "$work/release.vbundle" --json "${policy[@]}" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["statement_sha256"])')
key() { echo "pkcs11:token=$1;object=$2?pin-source=file:$pins/$1.pin"; }
# --yes because the demo has no one to type 'yes'; --expect-statement signs only the statement inspected
for n in 1 3; do
  vault bundle approve "$work/release.statement.json" --detached -o "$work/approval-$n.json" \
    --key "$(key vault-approver-$n approver-signing)" --expect-statement "$statement" --yes "${policy[@]}"
done
vault bundle add-approvals "$work/release.vbundle" "$work/approval-1.json" "$work/approval-3.json" "${policy[@]}"

step "Promote: the release signer signs (threshold met); the promotion is logged and its head kept in the release token"
vault bundle promote "$work/release.vbundle" --key "$(key vault-release release-signer)" \
  --log "$work/promotions.log" "${policy[@]}"
vault bundle log verify "$work/promotions.log" --token "$(uri vault-release)" "${policy[@]}"

step "Each station loads the promoted bundle: policy, approvals, window, counter, its allocation; decrypts in its token"
station() { local n=$1; shift; vault station "$@" --state "$work/station-$n" --token "$(uri vault-station-$n)" \
  --station-id "station-$n" --root-cert "$rootca"; }
for n in 1 2; do
  station $n load --policy "$work/ceremony-station-2/policy-v4.json" --bundle "$work/release.vbundle"
done

step "Each station is described by a configuration file (stations/ has templates): its token, root, folders, fixtures"
cat > "$work/station-1.yaml" <<CONFIG
station: station-1
token: "$(uri vault-station-1)"
root: {certificate: ceremony-root/root-ca.pem}
state: station-1
evidence: evidence
operators: [alice]
label: {source: adapter}
fixtures:
$(for slot in 1 2 3 4; do printf '  - {slot: %s, adapter: simulated}\n' "$slot"; done)
CONFIG
tool="$root/stations/tools/stand-in-programmer"
cat > "$work/station-2.yaml" <<CONFIG
station: station-2
token: "$(uri vault-station-2)"
root: {certificate: ceremony-root/root-ca.pem}
state: station-2
evidence: evidence
operators: [bob]
label: {source: none}
timeouts: {program: 120}
fixtures:
$(for slot in 1 2; do cat <<FIXTURE
  - slot: $slot
    adapter: command
    options:
      port: $work/ports/fixture-$slot
      steps:
        wait: {run: [$tool, place, --port, "{port}"]}
        read-id: {run: [$tool, uid, --port, "{port}"], hardware-id: {pattern: "UID: ([0-9a-f]+)"}}
        program: {run: [$tool, write, --port, "{port}", --name, "{image_name}", "{image}"]}
        verify: {run: [$tool, sha256, --port, "{port}", --name, "{image_name}"], sha256: {pattern: "([0-9a-f]{64})"}}
        generate-key: {run: [$tool, keygen, --port, "{port}", --out, "{workdir}/device.csr"], csr: {file: "{workdir}/device.csr"}}
        install-certificate: {run: [$tool, put-cert, --port, "{port}", "{certificate}"]}
        lock: {run: [$tool, lock, --port, "{port}"], dry-run: [$tool, lock, --check-only, --port, "{port}"]}
FIXTURE
done)
  - {slot: 3, adapter: simulated}
  - {slot: 4, adapter: simulated, options: {fail-limit-every: 2}}   # every 2nd unit here draws too much current
CONFIG

step "station-1 provisions 10 simulated units on its 4 fixtures: unit 4's label is swapped, unit 7 fails to program and is retried, unit 2 comes back for rework four times (planted: the audit reports it as rework-repeated, medium)"
vault station provision --config "$work/station-1.yaml" --count 10 --label-mismatch 4 --fail 7:program --retry 7 \
  --rework 2 --rework 2 --rework 2 --rework 2 --operator alice

step "station-1's labels: a QR code per provisioned unit (serial, hardware id digest, date), as PNG and as ZPL for a thermal printer; each print is recorded in the unit's log (the console does this as each unit passes)"
vault station label --config "$work/station-1.yaml" --operator alice --all
echo "labels       $work/labels (PNG and ZPL); one unit's record: vault station record SERIAL --config $work/station-1.yaml"

step "station-2 rehearses its fixtures (a stand-in vendor tool on 2 of them): every step, nothing written, counted or logged"
vault station provision --config "$work/station-2.yaml" --count 4 --operator bob --dry-run

step "station-2 provisions 8 units on its 4 fixtures (on fixture 4 every 2nd unit fails its supply-current limit), then tries one more than its allocation"
vault station provision --config "$work/station-2.yaml" --count 8 --operator bob
status=0
vault station provision --config "$work/station-2.yaml" --count 1 --operator bob || status=$?   # refused: exit 4
[ "$status" = 4 ] || { echo "demo: provisioning past the allocation exited $status, not 4" >&2; exit 1; }

step "Each station shows its count and log, and exports its evidence, encrypted to the auditor (write-once folder)"
for n in 1 2; do
  station $n status
  station $n export --out "$work/evidence"
done
ls -l "$work/evidence"

step "station-2 is done with the release: it closes it (signed close-out beside its exports); the release manager reads it"
station 2 close "$work/release.vbundle" --out "$work/evidence"
vault bundle closeout "$work"/evidence/station-2-*.vault-closeout "${policy[@]}" --bundle "$work/release.vbundle"
if station 2 provision --count 1 --fixtures 1 --operator bob; then
  echo "demo: a closed release provisioned a unit" >&2; exit 1
fi

step "station-2's allocation is used up; a second state folder would start from zero, but the count is in its token"
if vault station load --state "$work/station-2-again" --token "$(uri vault-station-2)" --station-id station-2 \
    --root-cert "$rootca" --policy "$work/ceremony-station-2/policy-v4.json" --bundle "$work/release.vbundle"; then
  echo "demo: a second state folder was accepted" >&2; exit 1
fi

step "station-1's state folder is lost; it is rebuilt from its export copies, exactly to the token's head"
mv "$work/station-1" "$work/station-1.lost"
station 1 recover --from "$work/evidence"
station 1 load --policy "$work/ceremony-station-2/policy-v4.json" --bundle "$work/release.vbundle"
station 1 status

step "The auditor decrypts both stations' evidence with the auditor key, checks it against the policy and the bundle, and cosigns the station checkpoints it verified (a proof per device)"
vault audit "$work/evidence" --root-cert "$rootca" --policy "$work/ceremony-station-2/policy-v4.json" \
  --bundle "$work/release.vbundle" --token "$(uri vault-auditor)" \
  --json "$work/audit.json" --html "$work/audit.html" --cosign "$work/audited"
echo "HTML report: $work/audit.html"
grep -q '"cpk_min_units"' "$work/audit.json" || { echo "demo: the audit has no process figures" >&2; exit 1; }
echo "quality charts (test time per step, measurements against their limits with Cpk, calibration drift):"
echo "  $work/audit.html#process"
grep -q '"code": "rework-repeated"' "$work/audit.json" || { echo "demo: the planted rework-repeated was not found" >&2; exit 1; }
echo "found the planted anomaly: unit 2 of station-1 reworked 4 times (rework-repeated, medium; more than --max-reworks 3)"

step "Back up the root key: wrapped in the token under a fresh KEK split 2 of 3 among custodians"
vault ceremony run "$root/policies/backup.yaml" --credentials "$work/credentials-2.yaml" \
  --policy "$work/ceremony-station-2/policy-v4.json" --root-cert "$rootca" "${quorum[@]}" \
  --out "$work/ceremony-backup" --rehearsal --yes

step "Cloud team: the allowed-devices list from audited evidence only (every proof verified), for AWS IoT and Azure DPS"
vault registry export "$work/audited" "${policy[@]}" --out "$work/registry"
for n in 1 2; do
  grep -q "\"station\": \"station-$n\"" "$work/registry/allowed-devices.json" \
    || { echo "demo: no device of station-$n in the registry" >&2; exit 1; }
done
head -c 300 "$work/registry/aws-iot-bulk.jsonl"; echo " ..."

step "Onboarding server: one device's certificate and proof, checked offline against the trust policy"
proof=$(ls "$work"/audited/devices/station-1-*.tlog-proof | head -1)
cut -c1-100 "$proof" | head -4; echo "..."
vault registry verify "${proof%.tlog-proof}.pem" "$proof" "${policy[@]}"
other=$(ls "$work"/audited/devices/station-1-*.pem | tail -1)   # another device of the same station
if vault registry verify "$other" "$proof" "${policy[@]}"; then
  echo "demo: a proof admitted another device's certificate" >&2; exit 1
fi

step "Demo complete: outputs are in .demo/ (printable transcripts: .demo/ceremony-*/transcript.html)"
