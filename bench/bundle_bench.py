"""Benchmark the release bundle container: build and verify a large bundle, against ``openssl dgst -sha256``.

Not a test. It writes a random image (streamed, never held in memory),
builds a one-image bundle from it in a child process, decrypt-verifies it in
another child process (unwrap the data key, authenticate every chunk, hash
the plaintext), and times ``openssl dgst -sha256`` over the same plaintext
file. Each child reports its own peak resident memory (``VmHWM``), so the
numbers show that memory stays flat whatever the image size.

The build is planned as ``vault bundle build`` plans it (image lengths and
recipients first, so the header's space is reserved and each image is
encrypted straight into place) and includes the one fsync of the finished
bundle, which does reach the disk. Each round runs a build, then
``openssl dgst -sha256`` over the same image, then a verify, so every build
has an openssl run beside it; the build's ratio is the median of the
per-round ratios (5 rounds by default).

It sets up its own environment: it runs from the repository's ``.venv``
when the interpreter it was started with lacks the project's packages, and
its children and ``openssl`` run without the caller's ``OPENSSL_*``,
``PYTHON*``, ``SOFTHSM2_*`` and ``VAULT_*`` variables. ``--dir`` is made if
missing. The last line is the build's ratio, ``ratio build/openssl 1.21``,
to track run after run.

Usage::

    python bench/bundle_bench.py                 # 1 GiB, 5 rounds
    python bench/bundle_bench.py --quick         # 64 MiB
    python bench/bundle_bench.py --size-mib 256 --chunk-kib 4096 --repeat 9 --dir /var/tmp/bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _own import ROOT, at_least, clean_environment, own_dir, own_interpreter

if __name__ == "__main__":
    own_interpreter("cryptography")
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from vault.container import (  # noqa: E402
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    BundleReader,
    BundleWriter,
    seal_recipients,
    unwrap_data_key,
)
from vault.hpke import SoftwareDecapsulator  # noqa: E402

MIB = 1024 * 1024
STATION = "station-1"


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_random(path: Path, size: int) -> None:
    """``size`` random bytes to ``path``, 1 MiB at a time."""
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(MIB, left))
            f.write(block)
            left -= len(block)


# --- the two children ---------------------------------------------------------


def child_build(work: Path, chunk_size: int) -> dict[str, object]:
    private = serialization.load_pem_private_key((work / "station.pem").read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    bundle = work / "bench.bundle"
    cpu = time.process_time()
    start = time.perf_counter()
    with BundleWriter(bundle, chunk_size=chunk_size) as writer, (work / "image.bin").open("rb") as src:
        recipients = seal_recipients(writer.data_key, writer.bundle_id, {STATION: private.public_key()})
        writer.plan([("image.bin", os.fstat(src.fileno()).st_size)], recipients)  # as `vault bundle build` does
        image = writer.add_image("image.bin", src)
        encrypted = time.perf_counter()
        writer.finish(recipients, b'{"payload":"","payloadType":"bench","signatures":[]}')
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "cpu_seconds": time.process_time() - cpu,
        "encrypt_seconds": encrypted - start,
        "finish_seconds": end - encrypted,
        "plaintext_sha256": image.plaintext_sha256,
        "peak_rss_mib": peak_rss_mib(),
    }


def child_verify(work: Path) -> dict[str, object]:
    private = serialization.load_pem_private_key((work / "station.pem").read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    start = time.perf_counter()
    with BundleReader(work / "bench.bundle") as bundle:
        wrapped = bundle.header.recipients[STATION].wrapped_key
        data_key = unwrap_data_key(wrapped, bundle.header.bundle_id, STATION, SoftwareDecapsulator(private))
        digest = bundle.plaintext_digest("image.bin", data_key)
    return {"seconds": time.perf_counter() - start, "plaintext_sha256": digest, "peak_rss_mib": peak_rss_mib()}


def read_through(path: Path) -> None:
    """Read ``path`` once, so it is in the page cache."""
    with path.open("rb", buffering=0) as f:
        buffer = bytearray(MIB)
        while f.readinto(buffer):
            pass


def run_child(role: str, work: Path, chunk_size: int) -> dict[str, object]:
    """Run one child; its report, plus ``process_seconds``: its whole life, interpreter start included."""
    argv = [sys.executable, __file__, "--child", role, "--work", str(work), "--chunk-kib", str(chunk_size // 1024)]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=clean_environment())
    if result.returncode:
        raise SystemExit(f"bundle_bench: the {role} child failed: {result.stderr.strip()}")
    value: dict[str, object] = json.loads(result.stdout)
    value["process_seconds"] = time.perf_counter() - start
    return value


def num(result: dict[str, object], key: str) -> float:
    """A number a child reported."""
    value = result[key]
    assert isinstance(value, int | float)
    return float(value)


def time_openssl(path: Path) -> tuple[float, float, str]:
    """``openssl dgst -sha256`` of ``path``: its wall time, its CPU time (user and system) and the digest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    argv = ["openssl", "dgst", "-sha256", "-r", str(path)]
    result = subprocess.run(argv, check=True, capture_output=True, text=True, env=clean_environment())
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu, result.stdout.split()[0]


# --- the parent -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=at_least(0), default=1024, help="image size in MiB (default 1024)")
    parser.add_argument("--quick", action="store_true", help="a 64 MiB image")
    parser.add_argument("--chunk-kib", type=at_least(1), default=DEFAULT_CHUNK_SIZE // 1024, help="chunk size in KiB")
    parser.add_argument("--repeat", type=at_least(1), default=5, help="rounds of build, openssl, verify (default 5)")
    parser.add_argument(
        "--dir", type=Path, help="work folder, made if missing (default: a temporary one, removed after)"
    )
    parser.add_argument("--child", choices=["build", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chunk_size = args.chunk_kib * 1024

    if args.child:
        work = args.work
        result = child_build(work, chunk_size) if args.child == "build" else child_verify(work)
        print(json.dumps(result))
        return 0

    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        parser.error(f"--chunk-kib must be {MIN_CHUNK_SIZE // 1024} to {MAX_CHUNK_SIZE // 1024}")
    own_dir(parser, args.dir)
    size = (64 if args.quick else args.size_mib) * MIB
    with tempfile.TemporaryDirectory(prefix="vault-bench-", dir=args.dir) as tmp:
        rounds = run_rounds(Path(tmp), size, chunk_size, args.repeat)
    report(rounds, size, chunk_size)
    return 0


def run_rounds(work: Path, size: int, chunk_size: int, repeat: int) -> list[dict[str, dict[str, object]]]:
    """``repeat`` rounds of a build, ``openssl dgst -sha256`` of the same image, and a verify of the build."""
    station = ec.generate_private_key(ec.SECP256R1())
    pem = station.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (work / "station.pem").write_bytes(pem)
    write_random(work / "image.bin", size)
    os.sync()  # so the image's own writeback does not land on the first build
    _, _, expected = time_openssl(work / "image.bin")  # also warms the page cache
    rounds: list[dict[str, dict[str, object]]] = []
    for _ in range(repeat):
        (work / "bench.bundle").unlink(missing_ok=True)
        os.sync()  # the last bundle's removal, not on this build
        build = run_child("build", work, chunk_size)
        seconds, cpu, _ = time_openssl(work / "image.bin")
        read_through(work / "bench.bundle")  # written past the page cache: verify it cached, as openssl reads
        verify = run_child("verify", work, chunk_size)
        for what, got in (("build", build["plaintext_sha256"]), ("verify", verify["plaintext_sha256"])):
            if got != expected:
                raise SystemExit(f"bundle_bench: {what}: plaintext digest differs from openssl's")
        rounds.append({"build": build, "verify": verify, "openssl": {"seconds": seconds, "cpu_seconds": cpu}})
    rounds[-1]["bundle"] = {"size": (work / "bench.bundle").stat().st_size}
    return rounds


def report(rounds: list[dict[str, dict[str, object]]], size: int, chunk_size: int) -> None:
    """Print the medians, every run, and last the build's ratio."""
    mib = size / MIB

    def runs(role: str, key: str = "seconds") -> list[float]:
        return [num(r[role], key) for r in rounds]

    def line(label: str, times: list[float]) -> None:
        median = statistics.median(times)
        shown = ", ".join(f"{t:.3f}" for t in times)
        print(f"{label:22s}{median:7.3f} s {mib / median:6.0f} MiB/s  (runs {shown})")

    openssl, build, verify = runs("openssl"), runs("build"), runs("verify")
    print(
        f"image {mib:.0f} MiB, chunk {chunk_size // 1024} KiB, bundle {int(num(rounds[-1]['bundle'], 'size'))} bytes, "
        f"{os.cpu_count()} CPUs, {len(rounds)} rounds (build, openssl, verify)"
    )
    line("openssl dgst -sha256", openssl)
    line("build", build)
    print(
        f"  of which encrypt    {statistics.median(runs('build', 'encrypt_seconds')):7.3f} s; "
        f"finish (header, fsync, link) {statistics.median(runs('build', 'finish_seconds')):.3f} s"
    )
    line("verify (decrypt+hash)", verify)
    whole = statistics.median(runs("verify", "process_seconds"))
    print(f"verify, whole process {whole:7.3f} s  (python start, imports, unwrap, decrypt, hash)")
    print(f"peak RSS build        {max(runs('build', 'peak_rss_mib')):7.1f} MiB")
    print(f"peak RSS verify       {max(runs('verify', 'peak_rss_mib')):7.1f} MiB")
    cpu = statistics.median(
        b / o for b, o in zip(runs("build", "cpu_seconds"), runs("openssl", "cpu_seconds"), strict=True)
    )
    print(f"CPU time build/openssl {cpu:6.2f}  (all threads; about 2 at best: SHA-256 of plaintext and ciphertext)")
    print(
        f"load average (1 min)  {os.getloadavg()[0]:7.2f}  (other work on the machine slows the two-thread build most)"
    )
    pairs = [b / o for b, o in zip(build, openssl, strict=True)]
    print(f"ratio verify/openssl  {statistics.median(v / o for v, o in zip(verify, openssl, strict=True)):7.2f}")
    print(f"build/openssl by round  {', '.join(f'{p:.2f}' for p in pairs)}")
    print(f"ratio build/openssl {statistics.median(pairs):.2f}")


if __name__ == "__main__":
    sys.exit(main())
