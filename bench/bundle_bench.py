"""Benchmark the release bundle container: build and verify a large bundle, against ``openssl dgst -sha256``.

Not a test. It writes a random image (streamed, never held in memory),
builds a one-image bundle from it in a child process, decrypt-verifies it in
another child process (unwrap the data key, authenticate every chunk, hash
the plaintext), and times ``openssl dgst -sha256`` over the same plaintext
file. Each child reports its own peak resident memory (``VmHWM``), so the
numbers show that memory stays flat whatever the image size.

All files stay in the page cache on a machine with enough memory, so this
measures CPU work (AES-GCM, SHA-256, copies), not the disk; ``build`` includes
the fsync of the finished bundle, which does reach the disk.

Usage::

    python bench/bundle_bench.py                 # 1 GiB
    python bench/bundle_bench.py --quick         # 64 MiB
    python bench/bundle_bench.py --size-mib 256 --chunk-kib 4096 --repeat 5
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault.container import (
    DEFAULT_CHUNK_SIZE,
    BundleReader,
    BundleWriter,
    seal_recipients,
    unwrap_data_key,
)
from vault.hpke import SoftwareDecapsulator

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
    start = time.perf_counter()
    with BundleWriter(bundle, chunk_size=chunk_size) as writer, (work / "image.bin").open("rb") as src:
        image = writer.add_image("image.bin", src)
        encrypted = time.perf_counter()
        recipients = seal_recipients(writer.data_key, writer.bundle_id, {STATION: private.public_key()})
        writer.finish(recipients, b'{"payload":"","payloadType":"bench","signatures":[]}')
    end = time.perf_counter()
    return {
        "seconds": end - start,
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


def run_child(role: str, work: Path, chunk_size: int) -> dict[str, object]:
    """Run one child; its report, plus ``process_seconds``: its whole life, interpreter start included."""
    argv = [sys.executable, __file__, "--child", role, "--work", str(work), "--chunk-kib", str(chunk_size // 1024)]
    start = time.perf_counter()
    result = subprocess.run(argv, check=True, capture_output=True, text=True)
    value: dict[str, object] = json.loads(result.stdout)
    value["process_seconds"] = time.perf_counter() - start
    return value


def num(result: dict[str, object], key: str) -> float:
    """A number a child reported."""
    value = result[key]
    assert isinstance(value, int | float)
    return float(value)


def time_openssl(path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(path)], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, result.stdout.split()[0]


# --- the parent -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="image size in MiB (default 1024)")
    parser.add_argument("--quick", action="store_true", help="a 64 MiB image")
    parser.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_SIZE // 1024, help="chunk size in KiB")
    parser.add_argument("--repeat", type=int, default=3, help="verify and openssl runs, alternated (default 3)")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--child", choices=["build", "verify"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chunk_size = args.chunk_kib * 1024

    if args.child:
        work = args.work
        result = child_build(work, chunk_size) if args.child == "build" else child_verify(work)
        print(json.dumps(result))
        return 0

    size = (64 if args.quick else args.size_mib) * MIB
    with tempfile.TemporaryDirectory(prefix="vault-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        station = ec.generate_private_key(ec.SECP256R1())
        pem = station.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (work / "station.pem").write_bytes(pem)
        write_random(work / "image.bin", size)
        os.sync()  # so the image's own writeback does not land on the first build

        _, expected = time_openssl(work / "image.bin")  # also warms the page cache
        builds = []
        for _ in range(args.repeat):
            (work / "bench.bundle").unlink(missing_ok=True)
            os.sync()
            builds.append(run_child("build", work, chunk_size))
            if builds[-1]["plaintext_sha256"] != expected:
                raise SystemExit("build: plaintext digest differs from openssl's")
        build = sorted(builds, key=lambda b: num(b, "seconds"))[len(builds) // 2]

        verify_times, process_times, openssl_times, verify_rss = [], [], [], []
        for _ in range(args.repeat):
            verify = run_child("verify", work, chunk_size)
            if verify["plaintext_sha256"] != expected:
                raise SystemExit("verify: plaintext digest differs from openssl's")
            verify_times.append(num(verify, "seconds"))
            process_times.append(num(verify, "process_seconds"))
            verify_rss.append(num(verify, "peak_rss_mib"))
            seconds, _ = time_openssl(work / "image.bin")
            openssl_times.append(seconds)

        bundle_size = (work / "bench.bundle").stat().st_size
        mib = size / MIB
        openssl_median = statistics.median(openssl_times)
        verify_median = statistics.median(verify_times)
        build_seconds = num(build, "seconds")
        build_runs = ", ".join(f"{num(b, 'seconds'):.3f}" for b in builds)
        verify_runs = ", ".join(f"{t:.3f}" for t in verify_times)
        print(f"image {mib:.0f} MiB, chunk {chunk_size // 1024} KiB, bundle {bundle_size} bytes, {os.cpu_count()} CPUs")
        openssl_runs = ", ".join(f"{t:.3f}" for t in openssl_times)
        print(f"openssl dgst -sha256  {openssl_median:7.3f} s {mib / openssl_median:6.0f} MiB/s  (runs {openssl_runs})")
        print(f"verify (decrypt+hash) {verify_median:7.3f} s {mib / verify_median:6.0f} MiB/s  (runs {verify_runs})")
        print(f"build                 {build_seconds:7.3f} s {mib / build_seconds:6.0f} MiB/s  (runs {build_runs})")
        print(
            f"  of which encrypt    {num(build, 'encrypt_seconds'):7.3f} s; finish (header, copy, fsync, link) "
            f"{num(build, 'finish_seconds'):.3f} s"
        )
        process_median = statistics.median(process_times)
        print(f"verify, whole process {process_median:7.3f} s  (python start, imports, unwrap, decrypt, hash)")
        whole = process_median / openssl_median
        print(f"ratio verify/openssl  {verify_median / openssl_median:7.2f}  (whole process: {whole:.2f})")
        print(f"ratio build/openssl   {build_seconds / openssl_median:7.2f}")
        print(f"peak RSS build        {max(num(b, 'peak_rss_mib') for b in builds):7.1f} MiB")
        print(f"peak RSS verify       {max(verify_rss):7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
