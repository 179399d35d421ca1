"""Ed25519 signing of certificates. The private key is a PEM file (created on first use, mode 600); the
public key is served at /v1/audit/public-key so a third party can verify a certificate offline."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.core.canonical import canonical_json


def load_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The API's key, created at its first start. Workers only load it (``load_key``): one that created a
    key of its own where the file had gone signed heads no certificate's key verified (a probe)."""
    if path.exists():
        return load_key(path)
    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return load_or_create_key(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def key_problem(path: Path, head_keys: set[str]) -> str | None:
    """Why a server must not start on the key at ``path`` (None: it may, creating one where there is
    none and nothing was signed yet). ``head_keys``: the public keys (base64) each tenant's latest head
    carries. A probe removed the file and restarted the API: it made a new key without a word and signed heads
    with it, and every certificate saved before then failed against the published key."""
    fix = "UNLEARN_SIGNING_KEY_FILE must hold the Ed25519 key that signed the audit log's heads"
    if not path.exists():
        if not head_keys:
            return None
        return (
            f"no signing key at {path}, and the audit log's heads were signed with {_named(head_keys)}: {fix}"
        )
    try:
        held = public_key_b64(load_key(path))
    except OSError as exc:  # a folder, no permission: a traceback was printed (a review)
        return f"cannot read the signing key {path} ({exc.strerror or exc}): {fix}"
    except (ValueError, TypeError) as exc:
        return f"{path} is not an Ed25519 private key in PEM ({exc}): {fix}"
    if head_keys and head_keys != {held}:
        return (
            f"the key at {path} ({held[:12]}...) did not sign the latest heads ({_named(head_keys)}): {fix}"
        )
    return None


def _named(keys: set[str]) -> str:
    return ", ".join(f"{k[:12]}..." for k in sorted(keys))


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def sign_document(key: Ed25519PrivateKey, document: dict[str, Any]) -> dict[str, Any]:
    """Wrap `document` with a detached signature over its canonical JSON."""
    signature = key.sign(canonical_json(document).encode())
    return {
        "certificate": document,
        "signature": {
            "algorithm": "Ed25519",
            "canonicalization": "JSON, sorted keys, no whitespace, UTF-8",
            "public_key": public_key_b64(key),
            "value": base64.b64encode(signature).decode(),
        },
    }


def verify_signed(
    signed: dict[str, Any], part: str, trusted_public_key_b64: str | None = None, *, noun: str
) -> tuple[bool, str]:
    """Check the Ed25519 signature over `signed[part]` (a certificate, a tree head); with
    `trusted_public_key_b64`, also that it was signed by that key. `noun` names the part in messages."""
    problem = _shape_problem(signed, part)
    if problem is not None:  # Python's own words ("string indices must be integers") named no field
        return False, f"malformed {noun}: {problem}"
    try:
        sig = signed["signature"]
        embedded = sig["public_key"]
        if trusted_public_key_b64 is not None and embedded != trusted_public_key_b64:
            return False, f"{noun} signed by a different key than the trusted one"
        pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(embedded))
        pub.verify(base64.b64decode(sig["value"]), canonical_json(signed[part]).encode())
    except InvalidSignature:
        return False, f"signature does not match the {noun}'s content"
    except (KeyError, TypeError, ValueError) as exc:
        return False, f"malformed {noun}: {exc}"
    return True, "signature valid"


def _shape_problem(signed: dict[str, Any], part: str) -> str | None:
    """What a signed document lacks to be checked at all, by field name; None where its shape is right."""
    if not isinstance(signed.get(part), dict):
        return f"`{part}` must be an object"
    sig = signed.get("signature")
    if not isinstance(sig, dict):
        return "`signature` must be an object with `public_key` and `value`"
    for field in ("public_key", "value"):
        if not isinstance(sig.get(field), str):
            return f"`signature.{field}` must be a base64 string"
    return None


def verify_document(signed: dict[str, Any], trusted_public_key_b64: str | None = None) -> tuple[bool, str]:
    """Check a signed certificate (see `verify_signed`)."""
    return verify_signed(signed, "certificate", trusted_public_key_b64, noun="certificate")


def public_key_b64_from_pem(pem: str) -> str:
    pub = serialization.load_pem_public_key(pem.encode())
    if not isinstance(pub, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return base64.b64encode(
        pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
