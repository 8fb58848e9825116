"""vault.secrets: the device maker's side of per-device secrets (``vault secrets export``).

Stations seal each unit's secrets (a backend pre-shared key, a data-at-rest
key) to the device maker's secrets recipient and carry them in the evidence
exports (:mod:`vault.device_secrets`). :func:`export_secrets` audits the
exports in-process, opens the secrets of the devices the audit passed with
the recipient's key (in the device maker's token) and returns the backend's
rows; :func:`write_export` writes them as CSV and JSON, mode 0600, beside the
list of refused devices. The forms are documented in the README ("For the
backend team") and ``docs/adr/0012-device-secrets.md``.

Example (with the development tokens)::

    from pathlib import Path
    from cryptography import x509
    from vault.secrets import export_secrets, write_export
    from vault.token import open_token, parse_uri

    root = x509.load_pem_x509_certificate(Path("root-ca.pem").read_bytes())
    auditor = parse_uri("pkcs11:token=vault-auditor?pin-source=file:.softhsm/pins/vault-auditor.pin")
    backend = parse_uri("pkcs11:token=vault-backend?pin-source=file:.softhsm/pins/vault-backend.pin")
    with open_token(auditor) as a, open_token(backend) as b:
        result = export_secrets(
            sorted(Path("evidence").glob("*.vault-evidence")),
            policy=Path("policy.json").read_bytes(),
            root_certificate=root,
            bundle_path="release.vbundle",
            auditor=a.key(label="auditor-decrypt"),
            recipient=b.key(label="secrets-decrypt"),
        )
    write_export(result, Path("backend"))
"""

from vault.secrets._export import (
    CSV_FIELDS,
    EXPORT_FORMAT,
    RECIPIENT_LABEL,
    BackendRow,
    SecretsExport,
    check_free,
    export_secrets,
    refused_csv,
    rows_csv,
    rows_json,
    write_export,
)

__all__ = [
    "CSV_FIELDS",
    "EXPORT_FORMAT",
    "RECIPIENT_LABEL",
    "BackendRow",
    "SecretsExport",
    "check_free",
    "export_secrets",
    "refused_csv",
    "rows_csv",
    "rows_json",
    "write_export",
]
