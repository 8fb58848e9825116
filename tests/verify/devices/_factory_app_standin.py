"""A stand-in for a factory app on an ESP32-S3, speaking vault's CSR line protocol on a pty's master side.

Usage: python _factory_app_standin.py FD MAC MODE, MODE one of: good, refuse, silent, wrong-mac, bad-store,
no-secrets (answers SECRET "ERR unknown request", as an app from before it), echo (repeats a secret in its ERR),
mute-secrets (never answers SECRET).
It prints a boot log first (which the station must skip), keeps its key between requests (a CSR-DRY key is
thrown away), and writes what it stored to stderr for the test to check (a secret as "secret TARGET HEX").
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def csr(key: ec.EllipticCurvePrivateKey, mac: str) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, mac)])
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()


def main() -> None:
    fd, mac, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    port = os.fdopen(fd, "r+b", buffering=0)

    def say(line: str) -> None:
        port.write(line.encode() + b"\r\n")

    say("ESP-ROM:esp32s3-20210327")
    say("I (31) boot: ESP-IDF v5.3 2nd stage bootloader")
    key: ec.EllipticCurvePrivateKey | None = None
    buffer = b""
    while True:
        data = port.read(4096)
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            words = raw.decode().strip().split(" ")
            if mode == "silent" or words[0] != "VAULT":
                continue
            if words[1] == "HELLO":
                say(f"VAULT READY 1 {'000000000000' if mode == 'wrong-mac' else mac}")
            elif mode == "refuse":
                say("VAULT ERR no entropy source")
            elif words[1] == "CSR":
                key = key or ec.generate_private_key(ec.SECP256R1())
                say(f"VAULT CSR {csr(key, mac)}")
            elif words[1] == "CSR-DRY":
                say(f"VAULT CSR {csr(ec.generate_private_key(ec.SECP256R1()), mac)}")
            elif words[1] in ("CERT", "CERT-DRY"):
                der = base64.b64decode(words[2])
                stored = der + (b"\x00" if mode == "bad-store" else b"")
                if words[1] == "CERT":
                    print(f"stored {hashlib.sha256(der).hexdigest()}", file=sys.stderr, flush=True)
                say(f"VAULT CERT-OK {hashlib.sha256(stored).hexdigest()}")
            elif words[1] in ("SECRET", "SECRET-DRY"):
                secret(words[1:], mode, say)
            else:
                say("VAULT ERR unknown request")


def secret(words: list[str], mode: str, say: Callable[[str], None]) -> None:
    """SECRET NAME KIND TARGET BASE64: stored in "NVS" (stderr here) and answered with its digest."""
    verb, name, _kind, target, encoded = words
    if mode == "no-secrets":
        say("VAULT ERR unknown request")
    elif mode == "echo":
        say(f"VAULT ERR cannot write {encoded[:20]} to {target}")
    elif mode != "mute-secrets":
        value = base64.b64decode(encoded)
        stored = value + (b"\x00" if mode == "bad-store" else b"")
        if verb == "SECRET":
            print(f"secret {target} {stored.hex()}", file=sys.stderr, flush=True)
        say(f"VAULT SECRET-OK {name} {hashlib.sha256(stored).hexdigest()}")


if __name__ == "__main__":
    main()
