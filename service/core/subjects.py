"""How a data subject's ID is compared: one person named one way in the data and another way in a request
must still be one subject."""

from __future__ import annotations

import unicodedata


def stored(subject: str) -> str | None:
    """The subject ID as a dataset stores it, or None for "about no one" (blank). Surrounding whitespace
    is not part of a subject (a shard's member file usually ends in a newline), and canonically equivalent
    spellings are one: a probe's data held "Zoë" once as one code point and three times as "e" with a
    combining diaeresis, and an erasure naming Zoë as typed left three of her samples behind. NFC is the
    form keyboards and most text arrive in."""
    normal = unicodedata.normalize("NFC", subject.strip())
    return normal or None


def spellings(subject: str) -> list[str]:
    """The stored forms a subject named ``subject`` may have: ``stored``'s, and those a dataset registered
    before IDs were normalised may hold: the name trimmed but otherwise as sent, and its decomposed form
    (NFD, as some systems store text)."""
    trimmed = subject.strip()
    forms = (unicodedata.normalize("NFC", trimmed), trimmed, unicodedata.normalize("NFD", trimmed))
    return list(dict.fromkeys(forms))
