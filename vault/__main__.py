"""``python -m vault`` runs the command line."""

from vault._entry import main

main()
