"""The `unlearn` command line: every verb, its flags, and the function that runs it.

Building the parser imports the verb modules, which import nothing heavy until a verb runs, so
`unlearn --help` and the client verbs start without the database, the server or rich.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.cli.audit_log import cmd_audit_head, cmd_audit_verify, cmd_audit_verify_export
from service.cli.documents import (
    cmd_audit_export,
    cmd_certificate,
    cmd_public_key,
    cmd_verify_certificate,
)
from service.cli.registration import cmd_datasets, cmd_register_model
from service.cli.request import cmd_request
from service.cli.server import cmd_api, cmd_beat, cmd_db, cmd_keys, cmd_run, cmd_worker
from service.cli.verbs import client_verb, cmd_jobs, cmd_models, cmd_requests, cmd_versions
from service.core.states import JobState, RequestState

if TYPE_CHECKING:
    from service.cli.client import Client

# The same names as service.core.keys.SCOPES, spelled out so the client verbs need not import the database.
SCOPE_NAMES = ("deletion:write", "jobs:read", "audit:read", "admin")
# The dataset kinds of POST /v1/datasets/upload and POST /v1/datasets (service.api), spelled out likewise.
UPLOAD_KIND_NAMES = ("npz", "webdataset", "jsonl", "text_csv")
REGISTER_KIND_NAMES = ("npz", "csv_manifest", "npy", "webdataset", "jsonl", "text_csv")


def seconds(text: str) -> float:
    """A positive, finite number of seconds: a negative --timeout was taken, and the request sent before
    the wait gave up at once; nan never timed out (a probe)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive, finite number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unlearn",
        description="The unlearning service: start it (run, api, worker, beat, db, keys) or use it "
        "(datasets, models, request, jobs, versions, requests, certificate, public-key, audit, "
        "verify-certificate).",
    )
    # The connection flags are read before the command too (`unlearn --url U models`): argparse refused
    # them there ("invalid choice"), and a client's first try was that order. After the command they
    # default to SUPPRESS, so one given before it is not overwritten by the command's None.
    p.add_argument("--url", help="server URL of the client commands (also accepted after the command)")
    p.add_argument("--api-key", help="API key of the client commands (also accepted after the command)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Server verbs (they read the settings: UNLEARN_VAR_DIR, DATABASE_URL, ...).
    sub.add_parser(
        "run", help="start the embedded stack: migrations, demo model, worker and API"
    ).set_defaults(fn=cmd_run)
    api = sub.add_parser("api", help="start the API server only (production)")
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(fn=cmd_api)
    worker = sub.add_parser("worker", help="start a Celery worker (production)")
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconciler")
    worker.set_defaults(fn=cmd_worker)
    sub.add_parser("beat", help="start the periodic reconciler (production: exactly one)").set_defaults(
        fn=cmd_beat
    )
    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade", "check"])
    db.set_defaults(fn=cmd_db)

    # Connection flags of the client verbs (they talk to a running server).
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--url", default=argparse.SUPPRESS, help="server URL (env UNLEARN_URL, default http://127.0.0.1:8000)"
    )
    conn.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="API key (prefer env UNLEARN_API_KEY; else, for a local server, $UNLEARN_VAR_DIR/admin.key)",
    )
    conn.add_argument("--http-timeout", type=seconds, default=30.0, help=argparse.SUPPRESS)

    keys = sub.add_parser(
        "keys", help="create or revoke API keys (in the configured database, or --api through a server)"
    )
    ksub = keys.add_subparsers(dest="action", required=True)
    api_help = (
        "through the API of a running server with an admin key (its own tenant) instead of the database"
    )
    kc = ksub.add_parser("create", parents=[conn])
    kc.add_argument("--tenant", help="required without --api; with --api, defaults to the admin key's tenant")
    kc.add_argument("--scopes", nargs="+", required=True, choices=SCOPE_NAMES, metavar="SCOPE")
    kc.add_argument("--name", default="")
    kc.add_argument("--api", action="store_true", help=api_help)
    kr = ksub.add_parser("revoke", parents=[conn])
    kr.add_argument("id")
    kr.add_argument("--api", action="store_true", help=api_help)
    keys.set_defaults(fn=cmd_keys)

    def client_parser(name: str, fn: Callable[[Client, argparse.Namespace], int], **kw: Any) -> Any:
        sp = sub.add_parser(name, parents=[conn], **kw)
        sp.set_defaults(client_fn=client_verb(fn))
        return sp

    ds = client_parser("datasets", cmd_datasets, help="list datasets, or upload or register one")
    dsub = ds.add_subparsers(dest="action", metavar="ACTION")
    du = dsub.add_parser(
        "upload",
        parents=[conn],
        help="upload one file with a progress bar: an .npz (arrays x, y, ids), a WebDataset .tar shard, "
        "or text (.jsonl, .csv) with its tokenizer",
    )
    du.add_argument("file")
    du.add_argument("--name", required=True)
    du.add_argument(
        "--kind",
        choices=UPLOAD_KIND_NAMES,
        help="the file's kind (default: from its suffix: .npz npz, .tar webdataset, .jsonl jsonl, "
        ".csv text_csv)",
    )
    du.add_argument(
        "--tokenizer",
        metavar="FILE",
        help="text kinds: the tokenizer.json (tokenizers library) to upload with the texts",
    )
    dr = dsub.add_parser(
        "register", parents=[conn], help="register a file or folder the workers can read, by path"
    )
    dr.add_argument(
        "uri", help="a path under UNLEARN_DATA_ROOTS on the server (a folder for npy, webdataset)"
    )
    dr.add_argument("--name", required=True)
    dr.add_argument(
        "--kind",
        default="npz",
        choices=REGISTER_KIND_NAMES,
        help="npz (default); csv_manifest; npy (a folder: x.npy, y.npy, ids.npy); webdataset (a .tar "
        "shard or a folder of them); jsonl or text_csv (text: --features names the tokenizer)",
    )
    for dataset_parser in (du, dr):
        dataset_parser.add_argument("--features", help="the feature declaration: JSON, or @file")

    md = client_parser("models", cmd_models, help="list models, or register one")
    msub = md.add_subparsers(dest="action", metavar="ACTION")
    mr = msub.add_parser("register", parents=[conn], help="register a model: spec and v1 checkpoint")
    mr.set_defaults(client_fn=client_verb(cmd_register_model))
    mr.add_argument("--checkpoint", required=True, help="the v1 weights, a safetensors file")
    mr.add_argument("--spec", help="the whole spec as JSON, or @file; the flags below override it")
    mr.add_argument("--name")
    mr.add_argument("--architecture", help="a built-in name, torchvision:<builder>, timm:<name>, ...")
    mr.add_argument("--arch-kwargs", help="JSON object")
    mr.add_argument("--config", help="hf:<task> architectures: the config.json (sent as arch_kwargs.config)")
    mr.add_argument("--num-classes", type=int)
    mr.add_argument("--train", help="training dataset: id, or a name only one dataset has")
    mr.add_argument("--test", help="test dataset: id, or a name only one dataset has")
    mr.add_argument("--method", help="default unlearning method (server default: ugradsl_plus)")
    mr.add_argument("--params", help="the method's params, JSON object")
    mr.add_argument("--wait", action="store_true", help="wait until a worker has validated it")
    mr.add_argument("--timeout", type=seconds, default=600, help="give up waiting after this many seconds")
    mr.add_argument("--interval", type=seconds, default=1.0, help=argparse.SUPPRESS)

    rq = client_parser("request", cmd_request, help="ask a model to forget training samples or data subjects")
    rq.add_argument("model")
    rq.add_argument(
        "--ids-file",
        help="one sample ID per line, exactly as written (lines starting with # skipped), or a JSON list; - "
        "for stdin",
    )
    rq.add_argument(
        "--subjects",
        help="data subjects to forget, comma-separated: every sample of each is forgotten (IDs that hold "
        "commas: --subjects-file)",
    )
    rq.add_argument("--subjects-file", help="one subject ID per line, as --ids-file; - for stdin")
    rq.add_argument("--reference", help="your reference, e.g. a ticket number")
    rq.add_argument(
        "--reason",
        choices=("erasure", "mislabeled"),
        default="erasure",
        help="erasure (the labels are right: privacy, takedowns) or mislabeled (they are wrong: poisoned or "
        "mistaken labels), which decides how the samples are unlearned",
    )
    rq.add_argument(
        "--idempotency-key",
        help="the request's Idempotency-Key (default: one of its own per run); the POST is sent again under "
        "it for up to a minute while the server is briefly unavailable (503, 429), so a lost "
        "answer never makes a second request",
    )
    rq.add_argument(
        "--wait", action="store_true", help="follow the job with a progress bar, then show metrics"
    )
    rq.add_argument("--timeout", type=seconds, default=3600, help="give up waiting after this many seconds")
    rq.add_argument("--interval", type=seconds, default=0.5, help=argparse.SUPPRESS)

    jb = client_parser("jobs", cmd_jobs, help="list jobs with state and progress")
    jb.add_argument("--model")
    jb.add_argument("--state", choices=[s.value for s in JobState])
    jb.add_argument("--limit", type=int, default=20)
    jb.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")
    jb.add_argument("--interval", type=seconds, default=1.0, help=argparse.SUPPRESS)

    vs = client_parser("versions", cmd_versions, help="a model's version line with metrics and hashes")
    vs.add_argument("model")
    vs.add_argument("--full", action="store_true", help="print whole checkpoint hashes")

    rs = client_parser("requests", cmd_requests, help="find deletion requests by id, reference, state")
    rs.add_argument("id", nargs="?", help="one request id")
    rs.add_argument("--model")
    rs.add_argument("--reference")
    rs.add_argument("--state", choices=[s.value for s in RequestState])
    rs.add_argument("--limit", type=int, default=50)

    ce = client_parser(
        "certificate", cmd_certificate, help="download a completed request's signed certificate"
    )
    ce.add_argument("request_id")
    ce.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")

    pk = client_parser("public-key", cmd_public_key, help="download the key that signs certificates (PEM)")
    pk.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")

    au = sub.add_parser("audit", help="export, keep a signed head of, or verify the audit log")
    asub = au.add_subparsers(dest="action", required=True)
    ae = asub.add_parser("export", parents=[conn], help="stream the audit trail to a file")
    ae.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    ae.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    ae.add_argument("--since", help="ISO time with a timezone, e.g. 2026-01-01T00:00:00Z")
    ae.add_argument("--until", help="ISO time with a timezone")
    ae.add_argument("--model")
    ae.set_defaults(client_fn=client_verb(cmd_audit_export))
    ah = asub.add_parser("head", parents=[conn], help="save the log's current signed tree head")
    ah.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    ah.set_defaults(client_fn=client_verb(cmd_audit_head))
    av = asub.add_parser(
        "verify", parents=[conn], help="check the log on the server, and (--head) against a head you kept"
    )
    av.add_argument("--head", help="a signed tree head saved earlier: prove the log still extends it")
    av.add_argument("--public-key", help="the service's public key (PEM) the heads must be signed with")
    av.set_defaults(client_fn=client_verb(cmd_audit_verify))
    # The offline verbs take the connection flags too, and need none: they were accepted before the verb
    # and refused after it ("unrecognized arguments"; a probe)
    ax = asub.add_parser(
        "verify-export",
        parents=[conn],
        help="check an exported JSONL file against a kept head, offline (no server needed)",
    )
    ax.add_argument("file", help="the whole log exported with `audit export --format jsonl` (no filters)")
    ax.add_argument("--head", required=True, help="a signed tree head saved with `audit head`")
    ax.add_argument("--public-key", required=True, help="the service's public key (PEM)")
    ax.set_defaults(client_fn=cmd_audit_verify_export)

    vc = sub.add_parser(
        "verify-certificate",
        parents=[conn],
        help="check a certificate's Ed25519 signature offline (no server needed)",
    )
    vc.add_argument("file", help="the signed certificate (JSON, as served by the API)")
    vc.add_argument("--public-key", help="the service's public key (PEM); without it only self-consistency")
    vc.add_argument(
        "--subjects",
        help="comma-separated subject IDs: check they are exactly the subjects the certificate names",
    )
    vc.add_argument(
        "--subjects-file",
        help="as --subjects, one subject ID per line (or a JSON list), for IDs that hold commas; - for stdin",
    )
    vc.set_defaults(client_fn=cmd_verify_certificate)
    return p
