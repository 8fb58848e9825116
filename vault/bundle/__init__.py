"""Release bundles: build, inspect, approve m of n, promote, and the promotion log.

Promotion is guarded by the release signer's token, which holds the
promotion log's head and the highest security counter per product
(:mod:`vault.bundle._promotion`).

Example::

    from datetime import UTC, datetime
    from pathlib import Path
    from vault.bundle import build_bundle, load_release_description
    from vault.policy import load_policy

    policy = load_policy(policy_bytes, root_certificate, now=datetime.now(UTC))
    description = load_release_description(Path("policies/release.yaml"))
    build_bundle(description, policy, Path("release.vbundle"))
"""

from vault.bundle._approval import BundleView, approve_bundle, verify_bundle
from vault.bundle._build import BuildResult, build_bundle
from vault.bundle._description import ReleaseDescription, load_release_description
from vault.bundle._log import LogEntry, LogReport, verify_log
from vault.bundle._promotion import (
    Abandoned,
    Promotion,
    PromotionHead,
    abandon_promotion,
    promote_bundle,
    verify_log_against_digest,
    verify_log_against_token,
)

__all__ = [
    "Abandoned",
    "BuildResult",
    "BundleView",
    "LogEntry",
    "LogReport",
    "Promotion",
    "PromotionHead",
    "ReleaseDescription",
    "abandon_promotion",
    "approve_bundle",
    "build_bundle",
    "load_release_description",
    "promote_bundle",
    "verify_bundle",
    "verify_log",
    "verify_log_against_digest",
    "verify_log_against_token",
]
