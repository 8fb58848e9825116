"""vault: offline, HSM-backed signing and release promotion for factory provisioning.

The package is layered: :mod:`vault.crypto` and :mod:`vault.token` at the
bottom, :mod:`vault.verify` (the station library) above them, ceremony,
bundle and audit above that, and the ``vault`` command line on top.
Importing ``vault`` imports none of them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
