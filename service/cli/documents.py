"""The verbs that produce or check evidence: download a certificate or the signing key, export or verify
the audit chain, and check a certificate offline.

`verify-certificate` needs neither a server nor a key, nor the database library; it imports
`service.core.signing` (cryptography only) when it runs, so the other verbs never load it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.audit_log import certificate_evidence, trusted_key
from service.cli.errors import UsageError
from service.cli.render import say
from service.core.subjects import stored

if TYPE_CHECKING:
    from service.cli.client import Client


def _write_output(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_certificate(client: Client, args: argparse.Namespace) -> int:
    signed = client.certificate(args.request_id)
    _write_output(args.output, json.dumps(signed, indent=2, ensure_ascii=False) + "\n")
    if args.output != "-":
        say(f"wrote the signed certificate of request {args.request_id} to {args.output}")
    return 0


def cmd_public_key(client: Client, args: argparse.Namespace) -> int:
    key = client.public_key()
    _write_output(args.output, key["pem"])
    if args.output != "-":
        say(f"wrote the service's {key['algorithm']} public key to {args.output}")
    return 0


def cmd_audit_export(client: Client, args: argparse.Namespace) -> int:
    filters = {"since": args.since, "until": args.until, "model": args.model}
    if args.output == "-":
        client.audit_export(args.format, sys.stdout.buffer, **filters)
        return 0
    tmp = Path(args.output + ".part")
    try:
        with open(tmp, "wb") as fh:
            size = client.audit_export(args.format, fh, **filters)
        tmp.replace(args.output)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    with open(args.output, newline="") as fh:
        rows = sum(1 for _ in (csv.reader(fh) if args.format == "csv" else fh))
    events = max(rows - 1, 0) if args.format == "csv" else rows
    say(f"wrote {events} audit event(s) ({size} bytes, {args.format}) to {args.output}")
    return 0


def named_subjects(args: argparse.Namespace) -> list[str] | None:
    """The subjects --subjects (comma-separated) and --subjects-file name, trimmed; None when neither is
    given. A file, since a subject ID may hold a comma ("Doe, John": a probe's certificate could not be
    checked against its name)."""
    from service.cli.request import read_ids

    from_file = getattr(args, "subjects_file", None)  # a Namespace built by hand may lack it
    if args.subjects is None and not from_file:
        return None
    given = args.subjects.split(",") if args.subjects is not None else []
    given += read_ids(from_file, "subject IDs") if from_file else []
    named = list(dict.fromkeys(s.strip() for s in given if s.strip()))
    if not named:
        raise UsageError("--subjects names no subject (give a comma-separated list, e.g. alice,bob)")
    return named


def _subjects_match(cert: dict[str, object], named: list[str]) -> tuple[bool, str]:
    """The certificate's subject digest is that of ``named`` as requests store them (composed), or, for
    a certificate of a request made before subjects were composed, of ``named`` as given."""
    from service.core.proofs import ids_sha256

    if cert.get("subject_ids_sha256") is None:
        return False, "the certificate names no subjects"
    composed = list(dict.fromkeys(n for s in named if (n := stored(s))))
    if cert["subject_ids_sha256"] not in (ids_sha256(composed), ids_sha256(named)):
        return False, f"the certificate's subjects are not exactly these {len(composed)}"
    return True, f"the certificate names exactly these {len(composed)} subject(s)"


def cmd_verify_certificate(args: argparse.Namespace) -> int:
    """Offline: no server, no key. Checks the Ed25519 signature over the certificate's canonical JSON, and
    that the completion event it carries is in the audit log (inclusion proof to a signed tree head)."""
    from service.core.signing import verify_document

    try:
        signed = json.loads(Path(args.file).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        say(f"certificate INVALID: {args.file} is not JSON ({exc})", file=sys.stderr)
        return 1
    trusted = trusted_key(args.public_key)
    if not isinstance(signed, dict):
        say("certificate INVALID: malformed certificate: not a JSON object", file=sys.stderr)
        return 1
    ok, reason = verify_document(signed, trusted)
    if ok:
        ok, evidence = certificate_evidence(signed, trusted)
        reason = f"audit evidence: {evidence}"
    if not ok:
        say(f"certificate INVALID: {reason}", file=sys.stderr)
        return 1
    cert = signed["certificate"]
    named = named_subjects(args)
    if named is not None:
        ok, reason = _subjects_match(cert, named)
        if not ok:
            say(f"certificate INVALID for these subjects: {reason}", file=sys.stderr)
            return 1
    of = f" ({cert['subject_count']} subject(s))" if cert.get("subject_count") else ""
    verdict = "valid" if trusted is not None else "self-consistent (not verified, see below)"  # a probe
    reference = cert.get("reference") or "no reference"
    say(
        f"certificate {verdict}: request {cert.get('request_id')} ({reference}), "
        f"{cert.get('sample_count')} sample(s){of} forgotten by {cert.get('model')} "
        f"{_versions(cert)}, signed by {signed['signature']['public_key']}"
    )
    say(f"audit log: {evidence}")
    if named is not None:
        say(f"subjects: {reason}")
    if trusted is None:
        say(
            "certificate NOT VERIFIED: only its self-consistency was checked (against the key embedded in "
            "it, which anyone can make); pass --public-key with the service's PEM (`unlearn public-key -o "
            "key.pem`) to check who signed it",
            file=sys.stderr,
        )
        return 1
    return 0


def _versions(cert: dict[str, Any]) -> str:
    """Where the samples went: ``v1 -> v2``, or for a request whose samples earlier jobs had all forgotten
    (it completes on the version it found), those versions, where ``v6 -> v6`` read as a job that did
    nothing (a probe)."""
    before = (cert.get("version_before") or {}).get("version")
    after = (cert.get("version_after") or {}).get("version")
    by = [e for e in cert.get("forgotten_by") or [] if isinstance(e, dict)]
    earlier = [e for e in by if e.get("version") != after]
    counts = ", ".join(f"{e.get('sample_count')} in {e.get('version')}" for e in by)
    if before != after:
        if not earlier:
            return f"{before} -> {after}"
        if len(earlier) == len(by):  # completed on a version another job's requests made (a probe's
            # "2 sample(s) forgotten by tab v4 -> v5", where v4 had forgotten both)
            return f"{before} -> {after} ({after} forgot none of them: earlier jobs did, {counts})"
        return f"{before} -> {after} ({counts})"
    if not by:  # no new version, and the forgetting it found before it is all it names
        return f"{after}"
    return f"{after} (no new version: earlier jobs forgot them, {counts})"
