"""The operator's console (``vault station console``) and the unit labels it prints.

The console is a full-screen terminal program (Textual) over the station
library, like the CLI: one panel per fixture, sign-in and sign-out, stops a
supervisor acknowledges, export on one key. It listens on no network port.
Textual is imported only when the console starts (:func:`run_console`);
the labels need segno only when one is made.

Example::

    vault station console --config stations/simulated.yaml
"""

from vault.console._labels import DEFAULT_CONTENT, LABEL_FIELDS, LabelData, LabelSpec, PrintedLabel, make_label

__all__ = ["DEFAULT_CONTENT", "LABEL_FIELDS", "LabelData", "LabelSpec", "PrintedLabel", "make_label"]
