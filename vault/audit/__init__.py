"""vault.audit: check evidence exports from the factory, find every ghost, clone and over-run, and report.

:func:`audit` decrypts the stations' evidence exports with the auditor's key
and checks them against the trust policy and the release bundles they were
made under (each manifest against the bundle it names):

- every manifest's signature by its station's enrolled key, its fields, and
  its device certificate (issued by the station's CA, for the device's key,
  hardware id and serial);
- each station's log across its exports: signed checkpoints, consistency
  proofs, no gap, no rewrite, no fork, no replayed manifest;
- counts: units per station against the allocation and in total against the
  production count, and a reconciliation of reserved, provisioned, failed,
  scrapped and reworked units;
- identities across stations: a hardware id provisioned twice, one serial or
  one device key on two devices;
- images programmed against the release's allowlist; manifests for another
  bundle; whether the bundle is promoted under the policy;
- time: monotonic per station, inside the release's window, no implausible
  jump; and it lists label mismatches, break-glass overrides and exceptions.

It streams: the main process reads each export's chunks in order while a
pool of worker processes decrypts and verifies them, and memory stays
bounded however many manifests there are. ``docs/audit-report.md`` documents
every check, finding code and report field. Problems in the evidence never raise:
each is a :class:`Finding` with a code from :data:`CODES`, a severity, the
stations, serials and hardware ids involved and the evidence (export file,
log position, manifest id). The :class:`Report` serialises to JSON
(schema ``vault-audit-report/v1``) and to one self-contained HTML page.

Example (with the development tokens, after ``vault station export``)::

    from pathlib import Path
    from cryptography import x509
    from vault.audit import audit
    from vault.token import open_token, parse_uri

    root = x509.load_pem_x509_certificate(Path("root-ca.pem").read_bytes())
    token = parse_uri("pkcs11:token=vault-auditor?pin-source=file:.softhsm/pins/vault-auditor.pin")
    with open_token(token) as session:
        report = audit(
            sorted(Path("evidence").glob("*.vault-evidence")),
            policy=Path("policy.json").read_bytes(),
            root_certificate=root,
            bundle_path="release.vault-bundle",
            decapsulator=session.key(label="auditor-decrypt"),
        )
    print(report.counts(), report.passed(fail_on="high"))
    Path("audit.html").write_text(report.to_html())
"""

from vault.audit._cosign import (
    NOT_COSIGNED,
    AuditedDevice,
    CosignedLog,
    Cosigning,
    Excluded,
    cosign,
    cosigner_holder,
)
from vault.audit._engine import JUMP_SECONDS, AuditProgress, audit
from vault.audit._findings import CODES, MAX_EVIDENCE, SEVERITIES, Evidence, Finding, Thresholds, severity_rank
from vault.audit._report import (
    REPORT_FORMAT,
    BundleReport,
    BundleSummary,
    ExportSummary,
    Quality,
    Reconciliation,
    Report,
    StationReport,
)

__all__ = [
    "CODES",
    "JUMP_SECONDS",
    "MAX_EVIDENCE",
    "NOT_COSIGNED",
    "REPORT_FORMAT",
    "SEVERITIES",
    "AuditProgress",
    "AuditedDevice",
    "BundleReport",
    "BundleSummary",
    "CosignedLog",
    "Cosigning",
    "Evidence",
    "Excluded",
    "ExportSummary",
    "Finding",
    "Quality",
    "Reconciliation",
    "Report",
    "StationReport",
    "Thresholds",
    "audit",
    "cosign",
    "cosigner_holder",
    "severity_rank",
]
