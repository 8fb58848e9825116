"""Key ceremonies: root key, custody shares, signed transcripts.

Example (a rehearsal on the SoftHSM2 development tokens)::

    from pathlib import Path
    from vault.ceremony import load_credentials, load_root_script, run_root_ceremony, verify_transcript

    script = load_root_script(Path("policies/root-ceremony.yaml"))
    creds = load_credentials(Path("policies/credentials.softhsm.yaml"))
    result = run_root_ceremony(script, creds, Path("ceremony-root"), rehearsal=True)
    verify_transcript(result.transcript.read_bytes(), root_certificate=result.root_certificate)
"""

from vault.ceremony._custody import check_share_against_transcript, share_text
from vault.ceremony._root import Credentials, Officer, RootCeremonyResult, RootScript, run_root_ceremony
from vault.ceremony._script import load_credentials, load_root_script
from vault.ceremony._transcript import Transcript
from vault.ceremony._verify import TranscriptReport, verify_transcript

__all__ = [
    "Credentials",
    "Officer",
    "RootCeremonyResult",
    "RootScript",
    "Transcript",
    "TranscriptReport",
    "check_share_against_transcript",
    "load_credentials",
    "load_root_script",
    "run_root_ceremony",
    "share_text",
    "verify_transcript",
]
