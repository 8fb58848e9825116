"""Key ceremonies: root key, station enrolment, role certificates, policy versions, backup and recovery.

Every ceremony runs a reviewed script (``policies/*.yaml``) against tokens
named in a separate credentials file, and writes a signed, hash-chained
transcript. The root ceremony makes the root key and trust policy v1 and
splits the root token's PINs among the officers; every later ceremony needs
m of their shares and the officers present, and signs the next policy version.

Example (a rehearsal on the SoftHSM2 development tokens)::

    from pathlib import Path
    from vault.ceremony import load_credentials, load_root_script, run_root_ceremony, verify_transcript

    script = load_root_script(Path("policies/root-ceremony.yaml"))
    creds = load_credentials(Path("policies/credentials.softhsm.yaml"))
    result = run_root_ceremony(script, creds, Path("ceremony-root"), rehearsal=True)
    verify_transcript(result.transcript.read_bytes(), root_certificate=result.root_certificate)
"""

from vault.ceremony._backup import MAX_BACKUP
from vault.ceremony._common import Credentials, Officer
from vault.ceremony._custody import MAX_SHARE_FILE, check_share_against_transcript, read_share, share_text
from vault.ceremony._operations import check_ceremony_inputs, run_operation_ceremony
from vault.ceremony._quorum import CeremonyInputs, CeremonyResult
from vault.ceremony._root import RootCeremonyResult, RootScript, run_root_ceremony
from vault.ceremony._script import OperationScript, load_credentials, load_root_script, load_script
from vault.ceremony._transcript import MAX_TRANSCRIPT, Transcript
from vault.ceremony._verify import TranscriptReport, verify_transcript

__all__ = [
    "MAX_BACKUP",
    "MAX_SHARE_FILE",
    "MAX_TRANSCRIPT",
    "CeremonyInputs",
    "CeremonyResult",
    "Credentials",
    "Officer",
    "OperationScript",
    "RootCeremonyResult",
    "RootScript",
    "Transcript",
    "TranscriptReport",
    "check_ceremony_inputs",
    "check_share_against_transcript",
    "load_credentials",
    "load_root_script",
    "load_script",
    "run_operation_ceremony",
    "read_share",
    "run_root_ceremony",
    "share_text",
    "verify_transcript",
]
