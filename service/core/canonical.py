"""The one JSON encoding that hashes and signatures are computed over: sorted keys, no whitespace, UTF-8.
Kept free of the database so offline verification (`unlearn verify-certificate`) stays light."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
