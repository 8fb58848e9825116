"""Benchmark the onboarding check: device proofs verified per second on one core, against bare ECDSA verifies.

Not a test. It sets up its own environment whatever the caller's shell
holds (``bench/_own.py``: its own SoftHSM2 tokens under ``--dir``, made if
missing, none of the caller's ``SOFTHSM2_*``, ``OPENSSL_*``... variables, the
repository's ``.venv`` if need be), runs the ceremonies and builds a promoted
bundle as the test suite does (``tests/verify``), provisions ``--devices``
simulated devices at station-1, exports the evidence, audits it and cosigns
it with the auditor's token (``vault.audit.cosign``), giving one C2SP
tlog-proof per device. Then, in this one process (one core):

1. **proofs**: :func:`vault.proof.verify_device_proof` on every device's
   certificate and proof, ``--rounds`` times: parse the proof, the
   station's checkpoint signature, the cosignatures, the certificate's
   issuer signature, the Merkle path, the manifest's signature and fields;
2. **baseline**: a bare loop of ``cryptography`` ECDSA P-256 verifications,
   as many as the proofs needed (``4`` per proof with one cosigner:
   checkpoint, cosignature, certificate, manifest), over a real signature.

The two alternate round by round, so load from other jobs on the machine
falls on both alike.

It prints both rates and, as its last line, the ratio (proof time over the
bare verifications' time; 1.0 would mean the check costs nothing but its
signatures).

Usage::

    python bench/proof_bench.py                       # 200 devices, 20 rounds
    python bench/proof_bench.py --devices 500 --rounds 10 --dir /tmp
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

from _own import ROOT, at_least, own_dir, own_environment, own_interpreter

if __name__ == "__main__":
    own_interpreter("cryptography", "pkcs11")
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=at_least(1), default=200)
    parser.add_argument("--rounds", type=at_least(1), default=20)
    parser.add_argument("--dir", type=Path, default=None, help="where to work, made if missing (default: temporary)")
    args = parser.parse_args()

    own_dir(parser, args.dir)
    work = Path(tempfile.mkdtemp(prefix="vault-proof-bench-", dir=args.dir))
    own_environment(work / "softhsm")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.verify.conftest import World
    from vault.audit import audit, cosign
    from vault.policy import load_policy
    from vault.proof import verify_device_proof
    from vault.token import open_token
    from vault.verify._simulate import run_simulation

    print(f"setting up: ceremonies, a promoted bundle, {args.devices} devices at station-1, in {work}")
    (work / "world").mkdir()
    world = World(work / "world")
    bundle = world.bundle(allocation=f"{{station-1: {args.devices}, station-2: 1}}", total=args.devices + 1)
    with world.station(work / "state") as station:
        station.load(bundle, world.policy)
        run_simulation(station, count=args.devices, fixtures=4)
        export = station.export(work / "evidence").path
    now = datetime.datetime.now(datetime.UTC)
    policy = load_policy(world.policy, world.root_cert, now=now)
    with open_token(world.tokens["auditor"]) as session:
        decrypt = session.key(label="auditor-decrypt")
        report = audit([export], policy=world.policy, root_certificate=world.root_cert, bundle_path=bundle,
                       decapsulator=decrypt, workers=1)  # fmt: skip
        cosigned = cosign(report, [export], policy, decapsulator=decrypt,
                          signer=session.key(label="auditor-cosign"), now=now)  # fmt: skip
    pairs = [(d.certificate, d.proof) for d in cosigned.devices]
    assert len(pairs) == args.devices, f"{len(pairs)} proofs for {args.devices} devices"
    per_proof = 3 + policy.cosigners_threshold

    key = ec.generate_private_key(ec.SECP256R1())
    public, message = key.public_key(), os.urandom(1024)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    for certificate, proof in pairs[:10]:  # warm-up
        verify_device_proof(certificate, proof, policy)
    proofs_time = bare_time = 0.0
    for _ in range(args.rounds):  # alternating, so that other load on the machine falls on both alike
        start = time.perf_counter()
        for certificate, proof in pairs:
            verify_device_proof(certificate, proof, policy)
        proofs_time += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(len(pairs) * per_proof):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        bare_time += time.perf_counter() - start
    count = args.rounds * len(pairs)
    verifications = count * per_proof

    print(f"proofs      {count:,} verified in {proofs_time:.3f} s: {count / proofs_time:,.0f} proofs/s on one core")
    print(f"baseline    {verifications:,} bare ECDSA P-256 verifies ({per_proof} per proof) in {bare_time:.3f} s: "
          f"{verifications / bare_time:,.0f}/s, {count / bare_time:,.0f} proofs' worth/s")  # fmt: skip
    print(f"ratio       {proofs_time / bare_time:.2f} (proof check time / bare verifies of the same count)")


if __name__ == "__main__":
    main()
