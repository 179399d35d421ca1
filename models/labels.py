"""How a label written as text (a CSV cell, a WebDataset ``.cls`` member) is read: ASCII digits only.

Python's ``int`` also reads ``1_0`` as 10 and Arabic-Indic or full-width digits as their values, so a
cell a client never meant as a number silently became a class (a probe's ``٣`` was class 3, and ``0_1``
would be class 1), where a JSON label must be a plain number. Surrounding spaces are allowed; a sign is
read so that a negative label is refused as negative rather than as unreadable.
"""

from __future__ import annotations

import re

_WHOLE = re.compile(r"\s*[-+]?[0-9]+\s*")


def read_label(text: str) -> int:
    """The label as an int; ValueError for anything but an optional sign and ASCII digits."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(f"not a whole number: {text!r}")
    return int(text)
