"""Text datasets, read without torch: the API reads their sample IDs and labels at registration (through
``service.core.dataset_ids``) with the same parser the worker's loader (``models.datasets``) uses.

Two kinds, one sample per record:

- ``jsonl``: one JSON object per line, ``{"sample_id": "...", "text": "...", "label": 0}`` and optionally
  ``"subject_id"`` (a string, or null / "" for a sample about no one). Blank lines are skipped.
- ``text_csv``: a CSV with a header naming ``sample_id,text,label`` (and optionally ``subject_id``);
  texts may hold commas and newlines when quoted, as any CSV writer quotes them.

A malformed record is named by its line (``TextFileError.problems``: up to ``SHOWN`` of them), so the
registrant can fix the file. Tokenizers come from a ``tokenizer.json`` on disk only
(``tokenizers.Tokenizer.from_file``): nothing is ever downloaded.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.declarations import DEFAULT_PAD_TOKEN, TEXT_KINDS, DeclarationError, TextFeatures
from models.labels import read_label

SHOWN = 20  # bad lines named in one refusal


@dataclass(frozen=True)
class TextRecord:
    line: int
    sample_id: str
    text: str
    label: int
    subject_id: str | None


class TextFileError(ValueError):
    """Records that cannot be read; ``problems`` holds ``(line, why)`` for the first ``SHOWN`` of them."""

    def __init__(self, path: Path, problems: list[tuple[int, str]], total: int) -> None:
        shown = "; ".join(f"line {line}: {why}" for line, why in problems)
        more = f" (and {total - len(problems)} more)" if total > len(problems) else ""
        super().__init__(f"{total} bad record(s) in {path.name}: {shown}{more}")
        self.problems, self.total = problems, total


def read_records(kind: str, path: str | Path) -> list[TextRecord]:
    """Every record of a ``jsonl`` or ``text_csv`` file; TextFileError naming the bad lines."""
    path = Path(path)
    if kind not in TEXT_KINDS:
        raise ValueError(f"not a text dataset kind: {kind!r}; text kinds: {list(TEXT_KINDS)}")
    records: list[TextRecord] = []
    problems: list[tuple[int, str]] = []
    total_bad = 0
    for line, got in _jsonl(path) if kind == "jsonl" else _text_csv(path):
        if isinstance(got, str):
            total_bad += 1
            if len(problems) < SHOWN:
                problems.append((line, got))
        else:
            records.append(got)
    if total_bad:
        raise TextFileError(path, problems, total_bad)
    return records


def _record(line: int, raw: dict[str, Any], *, from_csv: bool) -> TextRecord | str:
    """The record, or why it is not one."""
    sid, text, label = raw.get("sample_id"), raw.get("text"), raw.get("label")
    if not isinstance(sid, str) or not sid:
        return f"sample_id must be a non-empty string, got {sid!r}"
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if from_csv and isinstance(label, str):
        try:
            label = read_label(label)
        except ValueError:
            return f"label must be a whole number (a class index), got {label!r}"
    if isinstance(label, bool) or not isinstance(label, int):
        return f"label must be a whole number (a class index), got {label!r}"
    if label < 0:
        return f"label must not be negative, got {label}"
    subject = raw.get("subject_id")
    if subject is not None and not isinstance(subject, str):
        return f"subject_id must be a string or null, got {subject!r}"
    for field, value in (("sample_id", sid), ("text", text), ("subject_id", subject or "")):
        if not _utf8(value):  # JSON's \ud800 escapes: the tokenizer refused the text in an opaque TypeError
            return f"{field} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair)"
    return TextRecord(line, sid, text, label, subject or None)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _jsonl(path: Path) -> Iterator[tuple[int, TextRecord | str]]:
    with open(path, encoding="utf-8-sig") as fh:  # a leading BOM (Notepad, Excel) is not JSON
        for line, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield line, f"not JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(obj, dict):
                yield line, f"not a JSON object but {type(obj).__name__}"
                continue
            missing = [k for k in ("sample_id", "text", "label") if k not in obj]
            if missing:
                yield line, f"missing {', '.join(missing)}"
                continue
            yield line, _record(line, obj, from_csv=False)


def _text_csv(path: Path) -> Iterator[tuple[int, TextRecord | str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:  # a leading BOM (Excel) is not a header
        reader = csv.DictReader(fh)
        missing = {"sample_id", "text", "label"} - set(reader.fieldnames or ())
        if missing:
            yield 1, f"the header must name the columns sample_id, text, label (missing {sorted(missing)})"
            return
        for row in reader:
            line = reader.line_num  # the record's last line (a quoted text may span several)
            if None in row or any(row[k] is None for k in ("sample_id", "text", "label")):
                yield line, "the record does not have one value per header column"
                continue
            yield line, _record(line, dict(row), from_csv=True)


# ---------------------------------------------------------------- tokenizers (from disk only)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class TokenizerError(DeclarationError):
    """The declared tokenizer cannot be used (unreadable, changed, no padding token)."""


# The largest tokenizer.json read: XLM-R's 250k-token vocabulary is 17 MB, and a probe's 60 MB one held
# the API at 946 MB while it was parsed (the upload limit would have let 512 MB through)
MAX_TOKENIZER_BYTES = 64 << 20


def load_tokenizer(decl: TextFeatures) -> Any:
    """The declared ``tokenizers.Tokenizer``, truncating and padding to ``max_length``. Checks the file
    against ``tokenizer_sha256`` when the declaration records one. TokenizerError saying why not."""
    from tokenizers import Tokenizer

    path = Path(decl.tokenizer)
    if not path.is_file():
        raise TokenizerError(f"features.tokenizer: no file at {decl.tokenizer}")
    if (size := path.stat().st_size) > MAX_TOKENIZER_BYTES:
        raise TokenizerError(
            f"features.tokenizer {path.name} is {size:,} bytes; a tokenizer.json here is at most "
            f"{MAX_TOKENIZER_BYTES:,}"
        )
    if decl.tokenizer_sha256 is not None and (actual := file_sha256(path)) != decl.tokenizer_sha256:
        raise TokenizerError(
            f"tokenizer {decl.tokenizer} changed since registration (sha256 {actual[:16]}..., registered "
            f"{decl.tokenizer_sha256[:16]}...); refusing to use it"
        )
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is the registrant's file
        raise TokenizerError(
            f"features.tokenizer {path.name} is not a tokenizers tokenizer.json: {exc}"
        ) from None
    pad_token, pad_id = _padding(tok, decl)
    # the sides the tokenizer was saved with: a client's, truncating on the left, was read on the right,
    # and a model that scored 100% on its data scored 24% in the service (a probe)
    # Only the sides: a saved stride (question-answering tokenizers keep 128) overran a short max_length
    # with a ValueError, and an "only_second" strategy failed every load of single texts (a review)
    trunc, pad = tok.truncation or {}, tok.padding or {}
    try:
        tok.enable_truncation(max_length=decl.max_length, direction=str(trunc.get("direction", "right")))
        tok.enable_padding(
            length=decl.max_length,
            pad_id=pad_id,
            pad_token=pad_token,
            pad_type_id=int(pad.get("pad_type_id", 0)),
            direction=str(pad.get("direction", "right")),
        )
    except Exception as exc:  # noqa: BLE001 - the registrant's saved settings
        raise TokenizerError(f"features.tokenizer {path.name}: its truncation or padding: {exc}") from None
    added = tok.num_special_tokens_to_add(False)
    if added >= decl.max_length:  # the tokenizers library then silently leaves every text unpadded
        raise TokenizerError(
            f"features.max_length {decl.max_length} leaves no room for text: the tokenizer adds {added} "
            f"special tokens to each text; declare a max_length above {added}"
        )
    return tok


def _padding(tok: Any, decl: TextFeatures) -> tuple[str, int]:
    if decl.pad_token is None and tok.padding is not None:  # the tokenizer's own padding
        pad, pad_id = str(tok.padding["pad_token"]), int(tok.padding["pad_id"])
        if tok.id_to_token(pad_id) is None:  # registered, then the model was invalid for a vocabulary miss
            raise TokenizerError(
                f"the tokenizer's own padding ({pad!r}, id {pad_id}) is not in its vocabulary of "
                f"{tok.get_vocab_size()}; declare features.pad_token (a token of its vocabulary)"
            )
        return pad, pad_id
    pad = decl.pad_token or DEFAULT_PAD_TOKEN
    pad_id = tok.token_to_id(pad)
    if pad_id is None:
        raise TokenizerError(
            f"the tokenizer has no padding token {pad!r} in its vocabulary; declare features.pad_token "
            "(a token of its vocabulary) or save the tokenizer with padding enabled"
        )
    return pad, int(pad_id)


def encode(
    tok: Any, texts: list[str], lines: list[int] | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, attention_mask), each ``len(texts)`` lists of exactly ``max_length`` ints. A tokenizer
    that fails on a text is a TokenizerError naming its line (``lines``, one per text): a probe's
    pre-tokenizer regex made the tokenizers library panic, a BaseException that no ``except Exception``
    caught, and the worker process died three times on one registration."""
    try:
        encodings = tok.encode_batch(texts)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        at = _first_failing(tok, texts)
        where = f"line {lines[at]}" if lines is not None and at is not None else "a text"
        raise TokenizerError(f"the tokenizer failed on {where}: {type(exc).__name__}: {exc}") from None
    return [e.ids for e in encodings], [e.attention_mask for e in encodings]


def _first_failing(tok: Any, texts: list[str]) -> int | None:
    for i, t in enumerate(texts):
        try:
            tok.encode(t)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - as in ``encode``
            return i
    return None
