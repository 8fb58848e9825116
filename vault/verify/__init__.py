"""vault.verify: the verify-only library a factory station embeds.

It needs only ``cryptography``, ``python-pkcs11`` and vault's own format and
token code (no click, PyYAML or sigstore), so a station installs it with
those two packages alone. A station:

1. loads a release: verifies the trust policy against the pinned root
   (never older than one seen, not expired), the release statement (the
   approvers' threshold and the release signer), its window and security
   counter, that this station is a recipient with an allocation; unwraps the
   data key with ECDH inside the station token; decrypts and hashes every
   image against the allowlist;
2. provisions units, from several fixtures at once: each unit reserves one
   count of the allocation durably before the device is touched, binds the
   device's hardware id to its label serial and key, is programmed through a
   :class:`Device` adapter, gets a device certificate from the station's
   issuing CA in the token, and ends with a manifest signed by the station
   key and appended to the station's Merkle log, whatever the outcome;
3. exports the new manifests, their certificates, a signed checkpoint and a
   consistency proof from the last export, encrypted to the auditor's key
   (and a copy for itself, sealed to its own decryption key).

The log's head and the units reserved per release live in the station token
as well as in the state folder: a new, older, copied or diverging folder is
refused, and :func:`recover_state` rebuilds a lost one from the station's
export copies and older folders, checked against the token's head.

Every refusal is a typed :class:`vault.errors.VaultError` with a one-line
reason; :mod:`vault.errors` lists them.

Example (with the development tokens and an enrolled station, as in ``make demo``)::

    from pathlib import Path
    from cryptography import x509
    from vault.token import parse_uri
    from vault.verify import SimulatedDevice, Station

    root = x509.load_pem_x509_certificate(Path("root-ca.pem").read_bytes())
    token = parse_uri("pkcs11:token=vault-station-1?pin-source=file:.softhsm/pins/vault-station-1.pin")
    with Station("station-state", token=token, station_id="station-1", root=root) as station:
        station.load("release.vault-bundle", Path("policy.json").read_bytes())
        outcome = station.provision(SimulatedDevice(label="SN-0001"), label="SN-0001", fixture=1)
        print(outcome.event, outcome.serial, station.status().releases[0].left)
        station.export("evidence")

An onboarding server checks a device's certificate and its audited proof
with :func:`verify_device_proof` (from :mod:`vault.proof`, re-exported here):
it raises :class:`vault.errors.ProofError` with the one-line reason, or
returns the device, its log position and the auditors who cosigned.
"""

from vault.proof import DeviceProof, verify_device_proof
from vault.verify._device import STEPS, Device, ImageToProgram, SimulatedDevice
from vault.verify._recover import RecoveryResult, recover_state
from vault.verify._station import (
    COPY_SUFFIX,
    DECRYPTION_LABEL,
    ISSUING_CA_LABEL,
    SIGNING_LABEL,
    AllocationStatus,
    Clock,
    ExportResult,
    LoadedRelease,
    Outcome,
    Station,
    StationStatus,
    log_origin,
    system_clock,
)

__all__ = [
    "COPY_SUFFIX",
    "DECRYPTION_LABEL",
    "ISSUING_CA_LABEL",
    "SIGNING_LABEL",
    "STEPS",
    "AllocationStatus",
    "Clock",
    "Device",
    "DeviceProof",
    "ExportResult",
    "ImageToProgram",
    "LoadedRelease",
    "Outcome",
    "RecoveryResult",
    "SimulatedDevice",
    "Station",
    "StationStatus",
    "log_origin",
    "recover_state",
    "system_clock",
    "verify_device_proof",
]
