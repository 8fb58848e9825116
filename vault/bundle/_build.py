"""Build a release bundle: encrypt each image per chunk, wrap the data key per station, state it all.

Every check that can fail is made before the bundle file appears: the
validity window, the stations (enrolled, not revoked), the security counter
against the promotion log, each image's readability and its provenance. The
images are streamed once (constant memory) and encrypted straight into
place: the description lists the images and the stations, so the header's
space is reserved first and written last. The container writes into a
temporary file that becomes the bundle only when complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vault import container
from vault._files import read_capped
from vault.bundle._description import ImageSpec, ReleaseDescription
from vault.bundle._log import last_counter, release_signer_ids, verify_log
from vault.errors import InputError, PolicyError
from vault.formats import PAYLOAD_TYPE_INTOTO, Envelope, Statement, Subject
from vault.policy import TrustPolicy, format_time
from vault.release import RELEASE_PREDICATE, check_allocation, parse_release


@dataclass(frozen=True)
class BuildResult:
    """What was built."""

    path: Path
    bundle_id: str
    statement_sha256: str
    images: tuple[tuple[str, str, int], ...]  # name, plaintext sha256, length


def build_bundle(
    description: ReleaseDescription,
    policy: TrustPolicy,
    out: Path,
    *,
    log: Path | None = None,
    chunk_size: int = container.DEFAULT_CHUNK_SIZE,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BuildResult:
    """Build the bundle ``description`` asks for, for the stations ``policy`` enrols.

    Args:
        description: the parsed release description.
        policy: the verified current trust policy.
        out: the new bundle file (never written over).
        log: the promotion log, to refuse a security counter below the last promoted one.
        chunk_size: plaintext bytes per encrypted chunk.
        clock: the time source.

    Raises:
        VaultError: a check failed; no bundle file is left behind.
    """
    now = clock()
    if description.expires <= now:
        raise PolicyError(f"the validity window is already over (expired {format_time(description.expires)})")
    for station_id in description.allocation:
        if station_id not in policy.stations:
            known = ", ".join(sorted(policy.stations)) or "none"
            raise PolicyError(
                f"station '{station_id}' is not enrolled in trust policy v{policy.version} (enrolled: {known})"
            )
    if log is not None:
        last = last_counter(verify_log(log, release_signer_ids(policy)), description.product)
        if last is not None and description.security_counter < last:
            raise PolicyError(
                f"security counter {description.security_counter} is lower than {last}, "
                f"the last promoted for {description.product} (rollback)"
            )
    if out.exists():
        raise InputError(f"{out} exists; a bundle is never written over")
    for image in description.images:
        if not image.path.is_file():
            raise InputError(f"image {image.name}: cannot read {image.path}")
    checks = {image.name: _provenance_inputs(image) for image in description.images if image.provenance}

    bundle_id = container.new_bundle_id()
    data_key = container.new_data_key()
    recipients = {
        station_id: container.Recipient(
            policy.stations[station_id].decryption.key_id,
            container.wrap_data_key(data_key, bundle_id, station_id, policy.stations[station_id].decryption.public_key),
        )
        for station_id in sorted(description.allocation)
    }
    entries = []
    listed: list[dict[str, Any]] = []
    provenance: dict[str, Any] = {}
    with container.BundleWriter(out, bundle_id=bundle_id, data_key=data_key, chunk_size=chunk_size) as writer:
        # The header's length is known now: the writer reserves its space and encrypts straight into place.
        writer.plan([(image.name, _length(image)) for image in description.images], recipients)
        for image in description.images:
            try:
                with image.path.open("rb") as source:
                    encrypted = writer.add_image(image.name, source)
            except OSError as e:
                raise InputError(f"image {image.name}: cannot read {image.path}: {e.strerror}") from e
            if image.name in checks:
                provenance[image.name] = _gate(image.name, encrypted.plaintext_sha256, *checks[image.name])
            entries.append(encrypted.entry)
            listed.append(
                {
                    "name": image.name,
                    "sha256": encrypted.plaintext_sha256,
                    "length": encrypted.entry.plaintext_length,
                    "ciphertext_sha256": encrypted.entry.ciphertext_sha256,
                    "target": image.target,
                }
            )
        header = container.Header(bundle_id, chunk_size, tuple(entries), recipients)
        statement = Statement(
            subjects=tuple(Subject(name=i["name"], digest={"sha256": i["sha256"]}) for i in listed),
            predicate_type=RELEASE_PREDICATE,
            predicate={
                "bundle_id": bundle_id,
                "header_sha256": hashlib.sha256(header.to_bytes()).hexdigest(),
                "product": description.product,
                "version": description.version,
                "security_counter": description.security_counter,
                "not_before": format_time(description.not_before),
                "expires": format_time(description.expires),
                "production": {"total": description.total, "allocation": dict(sorted(description.allocation.items()))},
                "images": listed,
                "recipients": {sid: r.key_id for sid, r in recipients.items()},
                "provenance": provenance,
                "policy": {"version": policy.version, "sha256": policy.digest},
                **({"lock_profiles": description.lock_profiles} if description.lock_profiles else {}),
                "built": format_time(now),
            },
        )
        release = parse_release(statement)  # the same reader stations use
        check_allocation(release, policy)
        writer.finish(recipients, Envelope(PAYLOAD_TYPE_INTOTO, statement.to_bytes(), ()).to_json())
    return BuildResult(
        out,
        bundle_id,
        release.statement_sha256,
        tuple((i["name"], i["sha256"], i["length"]) for i in listed),
    )


_MAX_PROVENANCE_FILE = 16 * 1024 * 1024


def _length(image: ImageSpec) -> int:
    """The image file's length now; the writer refuses it if it reads another (the file changed meanwhile)."""
    try:
        return image.path.stat().st_size
    except OSError as e:
        raise InputError(f"image {image.name}: cannot read {image.path}: {e.strerror}") from e


def _provenance_inputs(image: Any) -> tuple[bytes, bytes, str, str]:
    p = image.provenance
    bundle = read_capped(p.sigstore_bundle, _MAX_PROVENANCE_FILE, f"image {image.name}'s Sigstore bundle")
    root = read_capped(p.trusted_root, _MAX_PROVENANCE_FILE, f"image {image.name}'s trusted root")
    return bundle, root, p.identity, p.issuer


def _gate(name: str, digest: str, bundle: bytes, root: bytes, identity: str, issuer: str) -> dict[str, Any]:
    from vault.bundle._provenance import verify_provenance  # sigstore is heavy: import it only when asked

    result = verify_provenance(name, digest, bundle, root, identity=identity, issuer=issuer)
    return dict(result.to_dict())
