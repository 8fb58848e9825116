"""Benchmark the auditor: audit one export of N manifests against a bare loop of as many ECDSA P-256 verifications.

Not a test. It sets up fresh SoftHSM2 tokens, runs the ceremonies and builds
a promoted bundle allocating N units to station-1 exactly as the test suite
does (``tests/verify``), then:

1. **generate**: N manifests for station-1, made directly (not through
   ``Station.provision``, far too slow for a million) in two processes that
   each open their own session on the station's token. Every manifest is a
   realistic one (unique hardware id, serial, device key id, the release's
   images with their digests, unit 1..N, log position 0..N-1, times one
   second apart inside the release window) signed by the REAL station
   signing key in SoftHSM. With ``--certificates`` (the default) each unit is
   ``provisioned`` and gets a real device certificate for a fresh P-256 key,
   laid out by ``vault.pki`` and signed by the station CA key in the token;
   with ``--no-certificates`` each is a ``failed`` (at ``program``) event
   without one. With ``--records`` (the default) each carries a test record
   as a station writes it (eight step times, two measurements with limits,
   two calibration coefficients); ``--no-records`` gives manifests as they
   were before test records existed. With ``--secrets`` each also records two
   component lots and one per-device secret, and its sealed secret (random
   bytes of a sealed PSK's size) follows its entry in the export, as a station
   writes them (ADR 0012). One export file is written with ``EvidenceWriter`` to the
   auditor's key: the export record, every entry in order, and a checkpoint
   signed by the station key over the Merkle root of the leaves. It is cached
   in the work folder (``--reuse DIR`` audits it again without generating).
2. **audit**: ``vault.audit.audit`` of export 1 in a child process with the auditor's
   token key and ``--workers`` worker processes; the wall time of the call, the
   main process's CPU time, and the peak RSS (``VmHWM``) of the main process and
   of every process under it (the forkserver and its workers, sampled). No
   finding may be ``high`` or worse.
3. **baseline**: in another child, a bare loop of as many ECDSA P-256
   verifications as the audit performs (one per manifest, plus one per
   device certificate) with ``cryptography``, split over as many processes,
   over real signatures of manifest-sized messages.

It prints the audit's wall time against the baseline's (target <= 1.15) and
the peak RSS (target <= 512 MiB); its last line is the ratio
(``ratio audit/bare 1.14``), so that it can be tracked from run to run.

With ``--incremental``, generation writes a second export of ``--new``
manifests (default 10,000) that extends station-1's log (its previous
checkpoint export 1's, with the consistency proof), and the bench audits
export 1 into a new audit state (``--state``; kept in the work folder and
made once), then ``--rounds`` times (default 5) export 2 with a fresh copy
of that state (the incremental audit) and export 2 alone, side by side, and
prints the median of the rounds' ratios of the incremental audit's wall time
to the lone one's (target <= 1.2): last line ``ratio incremental/alone ...``.

With ``--floor`` (and ``--reuse`` of a folder with certificates), it
measures, in one process, on the last export's real entry records, the
least Python any audit must run per manifest beside its two verifications:
the entry record's parts found by position (two base64 decodes and the
leaf's SHA-256: the audit's own reader), the statement parsed by the
standard library's JSON parser in C (no field read or checked), and a row
pickled back and inserted into an index; against two verifications of the
baseline's kind in the same process. Its last line is the ratio the audit
could reach if it did only that (``ratio floor/bare ...``).

The bench sets up its own SoftHSM2 tokens and runs in the project's
interpreter with none of the caller's ``SOFTHSM2_*``, ``VAULT_*``,
``OPENSSL_*``, ``P11_KIT_*`` or ``PYTHON*`` variables (``bench/_own.py``);
``--dir`` is made when it does not exist.

Usage::

    python bench/audit_bench.py --manifests 20000
    python bench/audit_bench.py --manifests 1000000 --dir /var/tmp/audit-bench
    python bench/audit_bench.py --reuse /var/tmp/audit-bench/vault-audit-bench-XXXX    # audit the cached export again
    python bench/audit_bench.py --incremental --manifests 1000000 --new 10000 --dir /var/tmp/audit-bench
    python bench/audit_bench.py --floor --reuse /var/tmp/audit-bench/vault-audit-bench-XXXX
    python bench/audit_bench.py --incremental --reuse /var/tmp/audit-bench/vault-audit-bench-XXXX
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _own import ROOT, at_least, clean_environment, own_dir, own_interpreter

sys.path.insert(0, str(ROOT))

START = datetime.datetime(2026, 6, 1, 6, 0, 0, tzinfo=datetime.UTC)  # the first manifest's time
SAMPLES = 4096  # distinct signed messages the baseline cycles through
_GAP = 120  # seconds between the first export and the second's first unit


def _clean_env() -> None:
    """Forget whatever token set-up (and the rest of :data:`_own.CALLERS`) the caller's shell names: the bench
    makes and uses its own, and its children inherit this."""
    own = clean_environment()
    os.environ.clear()
    os.environ.update(own)


def _env(work: Path) -> None:
    """The environment of the work folder's own tokens (softhsm/setup.sh's env file)."""
    _clean_env()
    for line in (work / "softhsm" / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name] = value


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --- setup ---------------------------------------------------------------------------------------


def setup(work: Path, n: int) -> dict[str, object]:
    """Fresh tokens, the ceremonies, and a promoted bundle allocating ``n`` units to station-1."""
    subprocess.run(["bash", str(ROOT / "softhsm" / "setup.sh"), "--dir", str(work / "softhsm"), "--quiet"], check=True)
    _env(work)
    from tests.verify.conftest import World, vault
    from vault.token import format_uri

    world_dir = work / "world"
    world_dir.mkdir()
    world = World(world_dir)
    description = world_dir / "release-bench.yaml"
    description.write_text(
        "product: example-sensor\nversion: 1.4.0\nsecurity_counter: 7\n"
        "not_before: 2026-01-01T00:00:00Z\nexpires: 2099-01-01T00:00:00Z\n"
        f"production:\n  total: {n}\n  allocation: {{station-1: {n}}}\n"
        'images:\n  - name: app.bin\n    path: images/app.bin\n    load_address: "0x08000000"\n'
        "  - name: config.bin\n    path: images/config.bin\n    partition: config\n"
    )
    bundle = world_dir / "release-bench.vbundle"
    policy = ["--policy", str(world.policy_path), "--root-cert", str(world.root_cert_path)]
    vault("bundle", "build", str(description), "-o", str(bundle), "--log", str(world.promotions), *policy)
    for i in (1, 3):
        key = world.key(f"approver-{i}", "approver-signing")
        vault("bundle", "approve", str(bundle), "--yes", "--key", key, *policy)
    vault("bundle", "promote", str(bundle), "--key", world.key("release", "release-signer"),
          "--log", str(world.promotions), *policy)  # fmt: skip
    # Load it once at a station: this checks it and gives the release as a station sees it.
    with world.station(work / "state") as station:
        loaded = station.load(bundle, world.policy)
    return {
        "bundle": str(bundle),
        "policy": str(world.policy_path),
        "root": str(world.root_cert_path),
        "station_token": format_uri(world.tokens["station-1"]),
        "auditor_token": format_uri(world.tokens["auditor"]),
        "release": {
            "bundle_id": loaded.release.bundle_id,
            "product": loaded.release.product,
            "version": loaded.release.version,
            "security_counter": loaded.release.security_counter,
            "policy_version": loaded.policy.version,
            "images": [[i.name, i.sha256] for i in loaded.images],
        },
    }


# --- generation ----------------------------------------------------------------------------------


def _record(unit: int) -> object:
    """A test record as the simulated adapter's station writes it, varying by unit."""
    from vault.manifest import Coefficient, QualityRecord, Reading

    steps = ("read-id", "program", "verify", "test", "generate-key", "certify", "install-certificate", "lock")
    current = 0.045 + (unit % 97 - 48) * 0.00004
    return QualityRecord(
        tuple((step, 20 + (unit * (i + 7)) % 900) for i, step in enumerate(steps)),
        (
            Reading("supply current", current, "A", 0.03, 0.06, True),
            Reading("boot time", 0.8 + (unit % 13) * 0.004, "s", None, 2.0, True),
        ),
        (
            Coefficient("adc gain", 1.0 + (unit % 31 - 15) * 0.0001),
            Coefficient("rtc trim", -3.0 + unit % 7 * 0.25, "ppm"),
        ),
    )


def _generate_part(job: tuple[dict[str, object], int, int, bool, str, int]) -> tuple[int, float]:
    """Units ``lo`` to ``hi - 1`` (1-based) as lines ``envelope\\tcertificate-base64-or-empty``; units after
    ``split`` (those of the second export) are dated two minutes later, after the first export was made."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from vault import pki
    from vault.crypto import key_id
    from vault.device_secrets import SealedRecord
    from vault.manifest import ImageRecord, Manifest, sign_manifest
    from vault.policy import load_policy
    from vault.token import open_token, parse_uri

    meta, lo, hi, certificates, out, split = job
    records = bool(meta.get("records", False))
    secrets = bool(meta.get("secrets", False))
    release = meta["release"]
    assert isinstance(release, dict)
    root = x509.load_pem_x509_certificate(Path(str(meta["root"])).read_bytes())
    policy = load_policy(Path(str(meta["policy"])).read_bytes(), root, now=START, allow_expired=True)
    issuer_certificate = policy.stations["station-1"].issuing_ca.certificate
    assert issuer_certificate is not None
    images = tuple(ImageRecord(name, sha256, None) for name, sha256 in release["images"])
    started = time.perf_counter()
    with open_token(parse_uri(str(meta["station_token"]))) as session, open(out, "w") as f:
        signing = session.key(label="station-signing")
        ca = session.key(label="station-ca")
        keys = {"signing": signing.key_id, "issuing_ca": ca.key_id}
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            issuer_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        )
        placeholder = ec.generate_private_key(ec.SECP256R1())
        ca_not_after = issuer_certificate.not_valid_after_utc
        for unit in range(lo, hi):
            sequence = unit - 1
            when = START + datetime.timedelta(seconds=sequence + (_GAP if unit > split else 0))
            hardware_id = os.urandom(16)
            hwid = hardware_id.hex()
            serial = f"station-1-{release['bundle_id'][:8]}-{unit:07d}"
            certificate_b64 = ""
            if certificates:
                device_key = ec.generate_private_key(ec.SECP256R1()).public_key()
                profile = pki.device_profile(serial, hardware_id, 1, not_before=when)
                profile = pki.with_validity(profile, when, min(when + datetime.timedelta(days=36500), ca_not_after))
                number = pki.random_serial(os.urandom)
                builder = pki._builder(
                    device_key, profile, issuer_certificate.subject, aki, number, when, profile.not_after
                )
                draft = builder.sign(placeholder, hashes.SHA256())
                tbs = draft.tbs_certificate_bytes
                der = pki._assemble(draft.public_bytes(serialization.Encoding.DER), tbs, ca.sign(tbs))
                certificate_b64 = base64.b64encode(der).decode()
                fields = dict(
                    event="provisioned", images=images, device_key_id=key_id(device_key),
                    certificate_serial=number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big").hex(),
                    certificate_sha256=hashlib.sha256(der).hexdigest(), failed_step=None, detail=None,
                )  # fmt: skip
            else:
                fields = dict(
                    event="failed", images=(), device_key_id=None, certificate_serial=None, certificate_sha256=None,
                    failed_step="program", detail="program failed: the probe lost contact",
                )  # fmt: skip
            blob = os.urandom(113) if secrets else b""  # a sealed 32-byte PSK: 65-byte enc, 32 bytes, 16-byte tag
            sealed = (SealedRecord("backend-psk", "psk-256", hashlib.sha256(blob).hexdigest(), "ab" * 32, True),)
            manifest = Manifest(
                id=os.urandom(16).hex(), sequence=sequence, station_id="station-1", operator="operator",
                fixture=1 + unit % 4, bundle_id=release["bundle_id"], product=release["product"],
                version=release["version"], security_counter=release["security_counter"],
                policy_version=release["policy_version"], unit=unit, hardware_id=hwid, serial=serial, label=None,
                keys=keys, time=when, clock="system", **fields,  # type: ignore[arg-type]
                quality=_record(unit) if records and certificates else None,
                secrets=sealed if secrets else (),
                lots={"mcu": f"L{2311 + unit // 1000}A", "antenna": "R-0042"} if secrets else None,
            )  # fmt: skip
            envelope = sign_manifest(manifest, signing)
            f.write(envelope.decode())
            f.write("\t")
            f.write(certificate_b64)
            f.write("\t")
            f.write(base64.b64encode(blob).decode())
            f.write("\n")
    return hi - lo, time.perf_counter() - started


def generate(work: Path, meta: dict[str, object], n: int, new: int, certificates: bool, processes: int) -> float:
    """Export 1 holds units 1..n; with ``new``, export 2 extends the log by units n+1..n+new (its previous
    checkpoint export 1's, with the consistency proof between them)."""
    import multiprocessing

    from cryptography import x509

    from vault.policy import load_policy

    started = time.perf_counter()
    jobs = []
    for lo, hi in ((1, n + 1), (n + 1, n + new + 1)):
        bounds = [lo + (hi - lo) * i // processes for i in range(processes + 1)]
        for i in range(processes):
            if bounds[i] < bounds[i + 1]:
                jobs.append((meta, bounds[i], bounds[i + 1], certificates, str(work / f"part-{len(jobs)}.lines"), n))
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for made, seconds in pool.map(_generate_part, jobs):
            print(f"  {made} manifests signed in {seconds:.1f} s ({made / seconds:.0f}/s in one process)")
    root = x509.load_pem_x509_certificate(Path(str(meta["root"])).read_bytes())
    policy_bytes = Path(str(meta["policy"])).read_bytes()
    policy = load_policy(policy_bytes, root, now=START, allow_expired=True)
    assert policy.auditor is not None
    exports = work / "exports"
    exports.mkdir(exist_ok=True)
    leaves: list[bytes] = []
    first = [job[4] for job in jobs if job[2] <= n + 1]
    second = [job[4] for job in jobs if job[1] > n]
    note = _write_export(meta, policy_bytes, policy.auditor.public_key, 1, 0, n, None, first, leaves, exports)
    if new:
        _write_export(meta, policy_bytes, policy.auditor.public_key, 2, n, n + new, note, second, leaves, exports)
    return time.perf_counter() - started


def _write_export(
    meta: dict[str, object], policy_bytes: bytes, auditor: object, sequence: int, start: int, end: int,
    previous: bytes | None, parts: list[str], leaves: list[bytes], folder: Path,
) -> bytes:  # fmt: skip
    """Export ``sequence`` of station-1: entries ``start`` to ``end - 1`` from the part files, and a checkpoint
    (with the consistency proof from ``previous``); ``leaves`` holds the log's leaf hashes so far. Its note."""
    from vault import checkpoint as notes
    from vault import merkle
    from vault.evidence import EvidenceWriter
    from vault.formats._json import canonical_json
    from vault.policy import format_time
    from vault.token import open_token, parse_uri
    from vault.verify import log_origin

    created = format_time(START + datetime.timedelta(seconds=end + 60 + (_GAP if sequence > 1 else 0)))
    with EvidenceWriter(
        folder / f"station-1-{sequence:06d}.vault-evidence",
        recipient=auditor,  # type: ignore[arg-type]
        station_id="station-1",
        sequence=sequence,
        created=created,
    ) as writer:
        writer.add(
            canonical_json(
                {
                    "type": "export",
                    "station_id": "station-1",
                    "sequence": sequence,
                    "from": start,
                    "to": end,
                    "created": created,
                    "previous_checkpoint": None if previous is None else previous.decode(),
                    "policy": base64.b64encode(policy_bytes).decode(),
                }
            )
        )
        position = start
        for part in parts:
            with open(part) as f:
                for line in f:
                    envelope, certificate, blob = line.rstrip("\n").split("\t")
                    leaves.append(merkle.leaf_hash(envelope.encode()))
                    record = {
                        "type": "entry",
                        "sequence": position,
                        "envelope": envelope,
                        "certificate": certificate or None,
                    }
                    writer.add(canonical_json(record))
                    if blob:
                        secrets = {"type": "secrets", "sequence": position, "sealed": {"backend-psk": blob}}
                        writer.add(canonical_json(secrets))
                    position += 1
            os.unlink(part)
        assert position == end == len(leaves)
        size, root = merkle.root_from_leaf_hashes(leaves)
        proof = [] if previous is None else merkle.consistency_proof(start, end, lambda a, b: leaves[a:b])
        origin = log_origin("station-1")
        with open_token(parse_uri(str(meta["station_token"]))) as session:
            note = notes.sign_checkpoint(
                notes.Checkpoint(origin, size, root), session.key(label="station-signing"), origin
            )
        consistency = [base64.b64encode(h).decode() for h in proof]
        writer.add(canonical_json({"type": "checkpoint", "checkpoint": note.decode(), "consistency": consistency}))
        writer.finish()
    return note


# --- the audit, in a child -----------------------------------------------------------------------


class _TreeRss:
    """The peak RSS (``VmHWM``) of this process's descendants (the forkserver's workers), sampled."""

    def __init__(self) -> None:
        import threading

        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        todo, seen = [os.getpid()], set()
        while todo:
            pid = todo.pop()
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
                if pid != os.getpid() and pid not in seen:
                    seen.add(pid)
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))
            except (OSError, ValueError):
                continue

    def stop(self) -> dict[int, int]:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peaks


def child_audit(work: Path, workers: int, profile: bool, exports: list[Path], state: Path | None) -> None:
    _env(work)
    from cryptography import x509

    from vault.audit import audit, severity_rank
    from vault.evidence import EvidenceReader
    from vault.policy import parse_time
    from vault.token import open_token, parse_uri

    meta = json.loads((work / "meta.json").read_text())
    root = x509.load_pem_x509_certificate(Path(meta["root"]).read_bytes())
    policy = Path(meta["policy"]).read_bytes()
    with EvidenceReader(exports[-1]) as newest:  # the audit runs an hour after the last export, not months later
        now = parse_time(newest.header.created, what="the export time") + datetime.timedelta(hours=1)
    with open_token(parse_uri(meta["auditor_token"])) as session:
        key = session.key(label="auditor-decrypt")
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        tree = _TreeRss()
        cpu = time.process_time()
        started = time.perf_counter()
        extra = {} if state is None else {"state": state}
        report = audit(
            exports, policy=policy, root_certificate=root, bundle_path=meta["bundle"], decapsulator=key,
            workers=workers, now=now, **extra,
        )  # fmt: skip
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        peaks = tree.stop()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(work / "audit.prof"))
    worst = [f for f in report.findings if severity_rank(f.severity) <= severity_rank("high")]
    result = {
        "wall": wall,
        "main_cpu": cpu,
        "rss_kib": _peak_rss_kib(),
        "workers_kib": sorted(peaks.values(), reverse=True),
        "manifests": report.manifests,
        "verified": report.verified,
        "findings": len(report.findings),
        "by_code": {f"{f.code} ({f.severity})": f.count for f in report.findings},
        "high": [f"{f.code} ({f.severity}): {f.message}" for f in worst],
    }
    print("RESULT " + json.dumps(result))


# --- the baseline, in a child --------------------------------------------------------------------

_samples: list[tuple[bytes, bytes]] = []
_public = None


def _init_baseline(public_der: bytes, samples: list[tuple[bytes, bytes]]) -> None:
    global _samples, _public
    from cryptography.hazmat.primitives import serialization

    _public = serialization.load_der_public_key(public_der)
    _samples = samples


def _verify_loop(count: int) -> int:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    assert _public is not None
    algorithm = ec.ECDSA(hashes.SHA256())
    verify = _public.verify  # type: ignore[union-attr]
    samples = _samples
    size = len(samples)
    for i in range(count):
        message, signature = samples[i % size]
        verify(signature, message, algorithm)
    return count


def child_baseline(verifications: int, processes: int) -> None:
    import multiprocessing

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    algorithm = ec.ECDSA(hashes.SHA256())
    samples = []
    for _ in range(SAMPLES):
        message = base64.b64encode(os.urandom(1500))  # about a manifest's PAE
        samples.append((message, key.sign(message, algorithm)))
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    shares = [verifications * (i + 1) // processes - verifications * i // processes for i in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes, _init_baseline, (public_der, samples)) as pool:
        pool.map(_verify_loop, [1] * processes)  # start-up, not timed
        started = time.perf_counter()
        done = sum(pool.map(_verify_loop, shares))
        wall = time.perf_counter() - started
    assert done == verifications
    print("RESULT " + json.dumps({"wall": wall}))


def _child(*argv: str) -> dict[str, object]:
    run = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"a child failed ({' '.join(argv[:2])}):\n{run.stderr[-4000:]}")
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _audit_child(work: Path, workers: int, exports: list[Path], *, state: Path | None = None, profile: bool = False):
    argv = ["--child-audit", str(work), "--workers", str(workers), "--exports", *map(str, exports)]
    return _child(*argv, *(["--state", str(state)] if state else []), *(["--profile"] if profile else []))


def _rss_line(audited: dict[str, object]) -> str:
    main_mib = int(audited["rss_kib"]) / 1024  # type: ignore[call-overload]
    others = [k / 1024 for k in audited["workers_kib"]]  # type: ignore[attr-defined]
    shown = ", ".join(f"{k:.0f}" for k in others[:4]) or "none"
    return f"main {main_mib:.1f} MiB, other processes {shown} MiB; whole tree {main_mib + sum(others):.1f} MiB"


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=at_least(1), default=20000)
    parser.add_argument(
        "--certificates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="provisioned units with real device certificates (default) or failed units without",
    )
    parser.add_argument(
        "--records",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="manifests carry a test record as stations write them (default) or none, as before records existed",
    )
    parser.add_argument(
        "--secrets",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="manifests record component lots and a sealed per-device secret, which follows each entry (ADR 0012)",
    )
    parser.add_argument(
        "--workers", type=at_least(1), default=2, help="audit workers, generation and baseline processes"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to work (made when missing; default: /tmp)")
    parser.add_argument("--reuse", type=Path, default=None, help="a work folder of an earlier run: audit it again")
    parser.add_argument("--profile", action="store_true", help="cProfile the audit's main process (audit.prof)")
    parser.add_argument(
        "--floor", action="store_true", help="with --reuse: the least Python per manifest, against 2 verifications"
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="audit a second export of --new manifests with the state of the first, against auditing it alone",
    )
    parser.add_argument("--new", type=at_least(1), default=10000, help="manifests in the second export (--incremental)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="incremental and alone runs side by side (--incremental): the median"
    )
    parser.add_argument("--child-audit", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-baseline", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--exports", type=Path, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    if args.child_audit is not None:
        return child_audit(args.child_audit, args.workers, args.profile, args.exports, args.state)
    if args.child_baseline is not None:
        return child_baseline(args.child_baseline, args.workers)

    own_interpreter("cryptography", "pkcs11")
    _clean_env()
    own_dir(parser, args.dir)
    if args.reuse is not None:
        work = args.reuse.resolve()
        if not (work / "meta.json").is_file():
            raise SystemExit(f"{work} is not a work folder of this bench (no meta.json)")
        try:  # a folder of another bench, or one a stopped setup left
            meta = json.loads((work / "meta.json").read_text())
            n, certificates, generation = meta["manifests"], meta["certificates"], meta["generation"]
            _env(work)
        except (OSError, ValueError, KeyError, TypeError) as e:
            why = f"{type(e).__name__}: {e}"
            raise SystemExit(f"{work} is not a work folder of this bench (meta.json, softhsm/env): {why}") from None
        if not (work / "exports").is_dir() or not any((work / "exports").glob("*.vault-evidence")):
            raise SystemExit(f"{work} is not a work folder of this bench (no exports/*.vault-evidence)")
        new = meta.get("new", 0)
        on = "on" if certificates else "off"
        print(f"reusing {work}: {n} manifests (+{new} in a second export), certificates {on}")
        if args.incremental and not new:
            raise SystemExit(f"{work} has no second export: generate with --incremental")
    else:
        n, certificates = args.manifests, args.certificates
        new = args.new if args.incremental else 0
        work = Path(tempfile.mkdtemp(prefix="vault-audit-bench-", dir=args.dir))
        print(f"setting up: ceremonies, two stations, a promoted bundle of {n + new} units in {work}")
        t0 = time.perf_counter()
        meta = setup(work, n + new)
        meta["records"] = args.records and certificates
        meta["secrets"] = args.secrets
        print(f"  setup {time.perf_counter() - t0:.1f} s")
        print(f"generating {n} (+{new}) manifests ({'with' if certificates else 'without'} device certificates)")
        generation = generate(work, meta, n, new, certificates, args.workers)
        meta.update(manifests=n, new=new, certificates=certificates, generation=generation)
        (work / "meta.json").write_text(json.dumps(meta, indent=1))

    exports = sorted((work / "exports").glob("*.vault-evidence"))
    kind = "provisioned, with device certificates" if certificates else "failed, no certificates"
    kind += ", with test records" if meta.get("records") else ""
    if args.incremental:
        return _incremental(work, args, exports, n, new, kind)
    if args.floor:
        if args.reuse is None or not certificates:
            raise SystemExit("--floor measures a work folder with certificates: give it with --reuse")
        return _floor(work, exports[-1])
    size = exports[0].stat().st_size
    print(f"auditing export 1 ({size / 2**20:.0f} MiB, {args.workers} workers)")
    audited = _audit_child(work, args.workers, exports[:1], profile=args.profile)
    verifications = n * (2 if certificates else 1)
    print(f"baseline: {verifications} ECDSA P-256 verifications in {args.workers} processes")
    base = _child("--child-baseline", str(verifications), "--workers", str(args.workers))

    audit_wall, base_wall = float(audited["wall"]), float(base["wall"])  # type: ignore[arg-type]
    print(f"manifests    {n} ({kind}{', with lots and sealed secrets' if meta.get('secrets') else ''})")
    print(f"generation   {generation:8.1f} s")
    print(f"audit        {audit_wall:8.1f} s  ({n / audit_wall:.0f} manifests/s, {audited['verified']} verified)")
    print(f"  main CPU   {float(audited['main_cpu']):8.1f} s  (the audit's main process, beside its workers)")  # type: ignore[arg-type]
    print(f"baseline     {base_wall:8.1f} s  ({verifications} verifications, {verifications / base_wall:.0f}/s)")
    print(f"peak RSS     {_rss_line(audited)} (target <= 512 MiB)")
    print(f"findings     {audited['findings']}: {audited['by_code']}")
    print(f"work folder  {work}  (--reuse it to audit again)")
    if audited["high"]:
        print(f"findings at or above high: {audited['high']}")
    print(f"ratio audit/bare {audit_wall / base_wall:.2f}")
    if audited["high"]:
        raise SystemExit(1)


def _floor(work: Path, export: Path) -> None:
    """The least Python per manifest an audit runs beside its two verifications (see the module's text)."""
    import pickle
    import sqlite3
    from collections.abc import Callable

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from vault.audit._worker import _canonical_entry
    from vault.evidence import EvidenceReader, decrypt_chunk
    from vault.token import open_token, parse_uri

    meta = json.loads((work / "meta.json").read_text())
    with open_token(parse_uri(meta["auditor_token"])) as session, EvidenceReader(export) as reader:
        key = reader.open(session.key(label="auditor-decrypt"))
        records = [r for chunk in reader.raw_chunks() for r in decrypt_chunk(key, reader.header.header_sha256, chunk)]
    entries = [r for r in records if r.startswith(b'{"certificate":')]
    start = entries[0].find(b'keyid\\":\\"') + len(b'keyid\\":\\"')
    keyid = entries[0][start : start + 64]
    parts = [_canonical_entry(record, keyid) for record in entries]
    if not entries or any(part is None for part in parts):
        raise SystemExit(f"{export}: not every entry is in the form a station writes")
    rows = [
        (i, "m" * 64, "provisioned", "h" * 16, "s" * 12, "k" * 64, 1, 1, i, None, None, i, 1, "op")
        for i in range(len(entries))
    ]
    index = sqlite3.connect(":memory:")
    index.execute(f"CREATE TABLE entries ({', '.join(f'c{i}' for i in range(14))})")
    signer = ec.generate_private_key(ec.SECP256R1())
    algorithm = ec.ECDSA(hashes.SHA256())
    signed = [(p[1], signer.sign(p[1], algorithm)) for p in parts[:SAMPLES]]  # type: ignore[index]
    public = signer.public_key()

    def best(step: Callable[[], object], per: int) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        return min(times) / per * 1e6

    steps = {
        "entry record: parts by position, 2 base64, leaf": lambda: [_canonical_entry(r, keyid) for r in entries],
        "statement: json.loads (C), nothing read": lambda: [json.loads(p[1]) for p in parts],  # type: ignore[index]
        "row: pickled, unpickled, inserted": lambda: index.executemany(
            f"INSERT INTO entries VALUES ({', '.join('?' * 14)})", pickle.loads(pickle.dumps(rows, protocol=5))
        ),
    }
    python = 0.0
    print(f"floor, per manifest ({len(entries)} real entry records of {export.name}, best of 5, one process):")
    for name, step in steps.items():
        cost = best(step, len(entries))
        python += cost
        print(f"  {name:50s} {cost:6.1f} µs")
    verify = best(lambda: [public.verify(sig, msg, algorithm) for msg, sig in signed], len(signed)) * 2
    print(f"  {'at least, in Python':50s} {python:6.1f} µs")
    print(f"  {'two ECDSA P-256 verifications':50s} {verify:6.1f} µs")
    print(f"  1.15 leaves {0.15 * verify:.1f} µs of Python per manifest, the main process's included")
    print(f"ratio floor/bare {(verify + python) / verify:.2f}")


def _current_format(state: Path) -> bool:
    """Whether the state folder's generation in use was written in this vault's state format."""
    from vault.audit._state import STATE_FORMAT

    try:
        generation = (state / "current").read_text().strip()
        return (state / generation / "format").read_text().strip() == STATE_FORMAT
    except OSError:
        return False


def _incremental(work: Path, args: argparse.Namespace, exports: list[Path], n: int, new: int, kind: str) -> None:
    """Export 1 audited with a fresh state; export 2 audited with that state, and alone; the two compared."""
    import shutil

    state = work / "audit-state"
    if not (state / "export-1-done").exists() or not _current_format(state):
        shutil.rmtree(state, ignore_errors=True)
        print(f"auditing export 1 ({n} manifests) into a new state {state}")
        first = _audit_child(work, args.workers, exports[:1], state=state)
        print(f"  {float(first['wall']):.1f} s, {_rss_line(first)}")  # type: ignore[arg-type]
        (state / "export-1-done").write_text(json.dumps(first))
    scratch = work / "audit-state-run"
    pairs = []
    for round_ in range(args.rounds):  # incremental and alone side by side, round after round
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(state, scratch)  # the state after export 1, kept for the next run
        os.sync()  # the copy on the disk, as an auditor's kept state is: its writeback not inside the run
        print(f"round {round_ + 1}: export 2 ({new} manifests) with the state of export 1, then alone")
        incremental = _audit_child(work, args.workers, exports, state=scratch)
        alone = _audit_child(work, args.workers, exports[1:2])
        pairs.append((float(incremental["wall"]), float(alone["wall"])))  # type: ignore[arg-type]
        print(f"  incremental {pairs[-1][0]:6.2f} s, alone {pairs[-1][1]:6.2f} s: {pairs[-1][0] / pairs[-1][1]:.2f}")
    shutil.rmtree(scratch, ignore_errors=True)
    inc_wall = statistics.median(p[0] for p in pairs)
    alone_wall = statistics.median(p[1] for p in pairs)
    print(f"manifests    {n} + {new} ({kind})")
    print(f"incremental  {inc_wall:8.2f} s  (median; export 2 after export 1's state; {_rss_line(incremental)})")
    print(f"alone        {alone_wall:8.2f} s  (median; export 2 by itself; {_rss_line(alone)})")
    print(f"findings     incremental {incremental['by_code']}; alone {alone['by_code']}")
    print(f"load average {os.getloadavg()[0]:8.2f}  (1 min)")
    print(f"work folder  {work}  (--reuse it --incremental to measure again)")
    print(f"ratio incremental/alone {statistics.median(a / b for a, b in pairs):.2f}")


if __name__ == "__main__":
    main()
