"""The `unlearn` command line against a live embedded stack: the installed console script in a subprocess,
as a user runs it. One stack serves the whole module (it trains the demo model once)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from service.core.keys import SCOPES
from tests.helpers import free_port, wait_until
from tests.stack import LiveStack
from tests.textdata import sentences, train_tokenizer, write_jsonl, write_text_csv

pytestmark = pytest.mark.slow

UNLEARN = str(Path(sys.executable).parent / "unlearn")
IDS = [f"digits-{i:04d}" for i in (3, 42, 77, 128, 256, 512, 777, 1024, 1200, 1400)]


@dataclass
class Cli:
    stack: LiveStack
    admin_key: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
        env.update(
            UNLEARN_URL=self.stack.base_url,
            UNLEARN_API_KEY=self.admin_key,
            UNLEARN_VAR_DIR=str(self.stack.var_dir),
            COLUMNS="200",
        )
        env.update(extra)
        return env

    def run(self, *argv: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [UNLEARN, *argv], env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    tmp = tmp_path_factory.mktemp("cli")
    stack = LiveStack(env={"UNLEARN_VAR_DIR": str(tmp / "var")}, log_path=tmp / "stack.log")
    stack.start()
    try:
        yield Cli(stack, (stack.var_dir / "admin.key").read_text().strip())
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def waited(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """`unlearn request digits --ids-file ... --wait`, run once for the module."""
    ids_file = tmp_path_factory.mktemp("ids") / "ids.txt"
    ids_file.write_text("# erasure batch for ticket cli-1\n" + "\n".join(IDS) + "\n\n")
    return cli.run(
        "request", "digits", "--ids-file", str(ids_file), "--reference", "cli-1", "--wait", timeout=300
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def request_id(cli: Cli, reference: str = "cli-1") -> str:
    with cli.stack.client() as c:
        [req] = c.get("/v1/deletion-requests", params={"reference": reference}).json()["items"]
    return req["id"]


def test_request_wait_follows_the_job_to_the_end_and_prints_the_new_versions_metrics(
    waited: subprocess.CompletedProcess[str],
) -> None:
    assert waited.returncode == 0, waited.stdout + waited.stderr
    out = waited.stdout
    assert "accepted: 10 sample(s) for digits" in out
    assert "completed: model digits, 10 sample(s)" in out
    assert "new version v2 of digits (parent v1)" in out
    for label in ("UA", "MIA", "RA", "TA"):
        assert label in out
    assert "v1 (before)" in out and "v2 (after)" in out
    assert "checkpoint sha256: " in out
    assert "100%" in waited.stderr  # the progress bar reached its end


def test_versions_lists_v2_with_its_checkpoint_hash(
    cli: Cli, waited: subprocess.CompletedProcess[str]
) -> None:
    result = cli.run("versions", "digits", "--full")
    assert result.returncode == 0, result.stderr
    sha = waited.stdout.split("checkpoint sha256: ")[1].split()[0]
    rows = [line for line in result.stdout.splitlines() if "v2" in line]
    assert rows and sha in rows[0] and "v1" in rows[0]  # v2, parent v1, with its full hash


def test_jobs_lists_the_completed_job(cli: Cli, waited: subprocess.CompletedProcess[str]) -> None:
    result = cli.run("jobs")
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout and "100%" in result.stdout and "v1 -> v2" in result.stdout


def test_jobs_watch_refreshes_until_interrupted(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    log = tmp_path / "watch.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [UNLEARN, "jobs", "--watch"],
            env=cli.env(),
            stdout=out,
            stderr=out,
            # A runner started in the background (`cmd &` in a script) passes SIGINT on as ignored, and
            # Python then never raises KeyboardInterrupt: give the child the default, as a terminal does.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            wait_until(lambda: "completed" in log.read_text(), timeout=30, what="the watched job table")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()


def test_audit_verify_reports_an_intact_chain(cli: Cli, waited: subprocess.CompletedProcess[str]) -> None:
    result = cli.run("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("audit chain OK: ")


def test_audit_export_writes_jsonl_and_csv(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    jsonl, csv_file = tmp_path / "audit.jsonl", tmp_path / "audit.csv"
    r1 = cli.run("audit", "export", "--format", "jsonl", "-o", str(jsonl))
    r2 = cli.run("audit", "export", "--format", "csv", "-o", str(csv_file))
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert any(e["action"] == "deletion_request.completed" for e in events)
    assert f"wrote {len(events)} audit event(s)" in r1.stdout and f"wrote {len(events)} audit" in r2.stdout
    assert csv_file.read_text().startswith("seq,ts,tenant,actor,action")


def test_verify_certificate_accepts_a_real_certificate_and_rejects_a_tampered_one(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    cert, pem = tmp_path / "cert.json", tmp_path / "key.pem"
    assert cli.run("certificate", request_id(cli), "-o", str(cert)).returncode == 0
    assert cli.run("public-key", "-o", str(pem)).returncode == 0

    # Offline: no server URL, no key.
    offline = {"UNLEARN_URL": "http://127.0.0.1:9", "UNLEARN_API_KEY": ""}
    ok = cli.run("verify-certificate", str(cert), "--public-key", str(pem), **offline)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("certificate valid: ") and "v1 -> v2" in ok.stdout
    assert "audit log: event " in ok.stdout and " is in the signed head of " in ok.stdout
    # Without the service's key anyone could have signed it: self-consistent, but not verified.
    unchecked = cli.run("verify-certificate", str(cert), **offline)
    assert unchecked.returncode == 1 and "NOT VERIFIED: only its self-consistency" in unchecked.stderr
    assert unchecked.stdout.startswith("certificate self-consistent (not verified")  # not "valid" (a probe)

    signed = json.loads(cert.read_text())
    signed["certificate"]["sample_count"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(signed))
    bad = cli.run("verify-certificate", str(tampered), "--public-key", str(pem), **offline)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "certificate INVALID: signature does not match the certificate's content"

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = cli.run("verify-certificate", str(cert), "--public-key", str(other), **offline)
    assert wrong.returncode == 1 and "different key" in wrong.stderr


def test_a_kept_tree_head_proves_the_log_still_extends_it(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    head, pem = tmp_path / "head.json", tmp_path / "key.pem"
    saved = cli.run("audit", "head", "-o", str(head))
    assert saved.returncode == 0, saved.stderr
    assert cli.run("public-key", "-o", str(pem)).returncode == 0
    size = json.loads(head.read_text())["tree_head"]["tree_size"]
    ids = tmp_path / "ids.txt"
    ids.write_text("digits-0005\n")
    assert cli.run("request", "digits", "--ids-file", str(ids)).returncode == 0  # the log grows
    ok = cli.run("audit", "verify", "--head", str(head), "--public-key", str(pem))
    assert ok.returncode == 0, ok.stderr
    kept_root = json.loads(head.read_text())["tree_head"]["root_hash"]  # not the current head's (a probe)
    unkeyed = cli.run("audit", "verify", "--head", str(head))  # checked, but not against the service's key
    assert unkeyed.returncode == 1 and "kept head NOT VERIFIED" in unkeyed.stderr, unkeyed.stderr
    assert f"extends the kept head of {size} (root {kept_root[:16]}...)" in ok.stdout

    forged = json.loads(head.read_text())
    forged["tree_head"]["root_hash"] = "00" * 32  # a head the service never signed
    head.write_text(json.dumps(forged))
    bad = cli.run("audit", "verify", "--head", str(head), "--public-key", str(pem))
    assert (
        bad.returncode == 1
        and "TAMPERED: the kept head: signature does not match the tree head" in bad.stderr
    )
    missing = cli.run("audit", "verify", "--head", str(tmp_path / "absent.json"))
    assert missing.returncode == 2 and missing.stdout == ""  # not "audit chain OK" first (a probe)
    assert "cannot read" in one_error_line(missing)


def test_an_exported_log_is_checked_against_a_kept_head_offline(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """What a compliance team holding only files can run: the export's events against a signed head,
    with the server unreachable. An edited event, a dropped one or a forged head is caught."""
    head, pem, export = tmp_path / "head.json", tmp_path / "key.pem", tmp_path / "audit.jsonl"
    assert cli.run("audit", "head", "-o", str(head)).returncode == 0
    assert cli.run("public-key", "-o", str(pem)).returncode == 0
    assert cli.run("audit", "export", "--format", "jsonl", "-o", str(export)).returncode == 0
    offline = {"UNLEARN_URL": f"http://127.0.0.1:{free_port()}", "UNLEARN_API_KEY": ""}
    check = ("audit", "verify-export", str(export), "--head", str(head), "--public-key", str(pem))
    size = json.loads(head.read_text())["tree_head"]["tree_size"]
    ok = cli.run(*check, **offline)
    assert ok.returncode == 0, ok.stderr
    assert f"audit export OK: the first {size} events reproduce the head's root" in ok.stdout
    bom = tmp_path / "bom.jsonl"  # saved by an editor that writes a byte-order mark: the same export
    bom.write_bytes(b"\xef\xbb\xbf" + export.read_bytes())
    assert cli.run("audit", "verify-export", str(bom), *check[3:], **offline).returncode == 0

    events = [json.loads(line) for line in export.read_text().splitlines()]
    edited = [dict(e) for e in events]
    edited[0]["data"] = {**edited[0]["data"], "reference": "changed"}
    swapped = [events[1], events[0], *events[2:]]
    leaf, link, added = ([dict(e) for e in events] for _ in range(3))
    leaf[1]["leaf_hash"] = "0" * 64
    link[2]["hash"] = "f" * 64
    added[0]["approved_by"] = "nobody"
    for tampered, says in (
        (leaf, "event 2's leaf_hash is not its body's"),  # the root alone missed these three
        (link, "event 3's chain link"),
        (added, "event 1 holds fields no event has: ['approved_by']"),
        (edited, "event 1's chain link"),
        (events[1:], "not seq 1, 2, 3, ... in order"),  # one removed, or an export filtered by --since
        (swapped, "not seq 1, 2, 3, ... in order"),
        (events[: size - 1], "events are missing"),  # fewer than the head covers
    ):
        export.write_text("".join(json.dumps(e) + "\n" for e in tampered))
        bad = cli.run(*check, **offline)
        assert bad.returncode == 1 and "audit export TAMPERED" in bad.stderr and says in bad.stderr

    export.write_text("".join(json.dumps(e) + "\n" for e in events))
    forged = json.loads(head.read_text())
    forged["tree_head"]["tree_size"] = 1
    head.write_text(json.dumps(forged))
    bad = cli.run(*check, **offline)
    assert bad.returncode == 1 and "NOT VERIFIED: the kept head" in bad.stderr


def test_an_export_whose_events_hold_unicode_line_separators_still_verifies_offline(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """A reference holding U+2028 was written raw into the JSONL, and the CLI's splitlines() cut its event
    in two: every later offline check of the tenant's log failed (a probe)."""
    with cli.stack.client() as c:
        r = c.post("/v1/models/digits/deletion-requests", json={"sample_ids": ["digits-0610"],
                   "reference": "line\u2028sep\u0085next\u2029end"})  # fmt: skip
        assert r.status_code == 202, r.text
    head, pem, export = tmp_path / "head.json", tmp_path / "key.pem", tmp_path / "audit.jsonl"
    assert cli.run("audit", "head", "-o", str(head)).returncode == 0
    assert cli.run("public-key", "-o", str(pem)).returncode == 0
    assert cli.run("audit", "export", "--format", "jsonl", "-o", str(export)).returncode == 0
    assert "\u2028" not in export.read_text() and len(
        export.read_text().splitlines()
    ) == export.read_text().count("\n")
    check = ("audit", "verify-export", str(export), "--head", str(head), "--public-key", str(pem))
    assert cli.run(*check).returncode == 0
    events = [json.loads(line) for line in export.read_text().split("\n") if line]
    export.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))  # as before: raw
    assert "\u2028" in export.read_text()
    ok = cli.run(*check)
    assert ok.returncode == 0, ok.stderr


def test_a_failed_requests_bar_ends_where_its_job_stopped(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """A job that fails its gates: the bar showed 0% and 'failed' while the job had stopped at 78%."""
    import httpx

    url, h = f"{cli.stack.base_url}/v1/models/digits", {"Authorization": f"Bearer {cli.admin_key}"}
    assert httpx.patch(url, json={"gates": {"min_mia_score": 1.0}}, headers=h).status_code == 200
    try:
        ids = tmp_path / "ids.txt"
        ids.write_text("digits-0007\ndigits-0008\n")
        failed = cli.run("request", "digits", "--ids-file", str(ids), "--wait", timeout=300)
    finally:
        assert httpx.patch(url, json={"gates": {"min_mia_score": None}}, headers=h).status_code == 200
    assert failed.returncode == 1, failed.stderr
    bar = [line for line in failed.stderr.splitlines() if "failed in evaluate:" in line]
    assert bar and " 0%" not in bar[-1], failed.stderr


def test_server_down_is_one_line_and_exit_code_3(cli: Cli) -> None:
    result = cli.run("versions", "digits", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "cannot reach the unlearning service" in one_error_line(result)


def test_a_url_that_is_not_one_is_a_usage_error_not_an_unreachable_server(cli: Cli) -> None:
    for url in ("not-a-url", "ftp://example.org"):
        result = cli.run("jobs", UNLEARN_URL=url)
        assert result.returncode == 2, (url, result.stderr)  # it was 3: "cannot reach ... is it running?"
        assert f"'{url}' is not an http(s) URL" in one_error_line(result)


def test_bad_key_is_one_line_and_exit_code_4(cli: Cli) -> None:
    result = cli.run("jobs", "--api-key", "ul_nope_not-a-key")
    assert result.returncode == 4
    assert one_error_line(result) == "error: the server rejected the API key: invalid or revoked API key"


def test_a_key_a_header_cannot_carry_is_one_line_and_exit_code_4(cli: Cli) -> None:
    """Non-ASCII was a UnicodeEncodeError traceback, a newline "cannot reach the server" (a probe)."""
    for key in ("ülkey", "a\nb"):
        result = cli.run("jobs", "--api-key", key)
        assert result.returncode == 4, (key, result.stderr)
        assert "the API key holds characters an HTTP header cannot carry" in one_error_line(result)


def test_unknown_model_is_one_line_and_exit_code_5(cli: Cli, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("digits-0001\n")
    for argv in (("versions", "nope"), ("request", "nope", "--ids-file", str(ids))):
        result = cli.run(*argv)
        assert result.returncode == 5, argv
        assert one_error_line(result) == "error: model 'nope' not found"


def test_unknown_sample_ids_are_named_in_one_line(cli: Cli, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("digits-0001\ndigits-9999\n")
    result = cli.run("request", "digits", "--ids-file", str(ids))
    assert result.returncode == 6
    assert "digits-9999" in one_error_line(result)


EVIL = "t-1\x1b[2J\x1b]0;pwned\x07 [bold red]markup[/]"


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_the_text_of_every_script() -> None:
    """Escaping every non-printable character had mangled Persian words (their zero-width non-joiner),
    emoji sequences and non-breaking spaces, and rich still turned `:warning:` into a glyph (a review)."""
    import io

    from service.cli.render import console, printable

    assert printable("x\x1b[2J\x07\r\x85") == "x\\x1b[2J\\x07\\r\\x85"
    assert printable("\u202egnp.exe") == "\\u202egnp.exe"  # shown as "exe.png" otherwise
    for kept in ("می\u200cخواهم", "a\xa0b", "👨\u200d👩\u200d👧", "line\nnext\ttab"):
        assert printable(kept) == kept
    out = console()
    out.file = io.StringIO()
    out.print("case:100:x :warning: [bold]b[/]")
    assert out.file.getvalue() == "case:100:x :warning: [bold]b[/]\n"


def test_other_peoples_text_is_printed_escaped_and_without_markup(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """A probe's reference cleared the screen and retitled the terminal of whoever listed the requests,
    and its rich markup was read as styling: what the client prints from the server is shown as text."""
    with cli.stack.client() as c:  # samples already forgotten: accepted, no new job
        r = c.post("/v1/models/digits/deletion-requests", json={"sample_ids": IDS[:1], "reference": EVIL})
        assert r.status_code == 202, r.text
    listed = cli.run("requests", "--reference", EVIL)
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert "t-1\\x1b[2J\\x1b]0;pwned\\x07 [bold red]markup[/]" in listed.stdout
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps([EVIL]))  # an unknown sample ID, which the 422 quotes back
    refused = cli.run("request", "digits", "--ids-file", str(ids))
    assert refused.returncode == 6 and "\x1b" not in refused.stderr
    assert "t-1\\x1b[2J" in one_error_line(refused)


def test_missing_ids_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli.run("request", "digits", "--ids-file", str(tmp_path / "absent.txt"))
    assert result.returncode == 2
    assert "cannot read the sample IDs file" in one_error_line(result)


def test_keys_create_and_revoke_still_manage_keys_in_the_database(cli: Cli) -> None:
    created = cli.run("keys", "create", "--tenant", "default", "--scopes", "jobs:read", "--name", "dash")
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[0]
    key_id = created.stdout.split("id=")[1].split()[0]

    assert cli.run("versions", "digits", "--api-key", key).returncode == 0
    no_scope = cli.run("audit", "verify", "--api-key", key)
    assert no_scope.returncode == 4
    assert one_error_line(no_scope) == "error: this API key lacks the scope 'audit:read'"

    for name in ("n" * 201, "a\udcffb"):  # a traceback on PostgreSQL, stored as sent on SQLite
        refused = cli.run("keys", "create", "--tenant", "default", "--scopes", "admin", "--name", name)
        assert refused.returncode == 2, refused.stderr
        assert "a key name" in one_error_line(refused)
    assert cli.run("keys", "revoke", "a\udcffb").returncode == 5  # bytes a command line could not decode
    assert cli.run("keys", "revoke", key_id).returncode == 0
    unknown = cli.run("keys", "revoke", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 5, unknown.stderr  # not found, as with --api (it was 1: "failed")
    # Revoked in the database behind the server's back: refused once the API's key cache lets go of it
    # (UNLEARN_KEY_CACHE_SECONDS; a revocation through the API takes effect at once, see below).
    revoked = wait_until(
        lambda: (r := cli.run("versions", "digits", "--api-key", key)).returncode == 4 and r,
        timeout=30,
        what="the revoked key to be refused",
    )
    assert "rejected the API key" in one_error_line(revoked)


def test_a_key_created_for_a_reader_that_stops_early_is_stored(cli: Cli) -> None:
    """`KEY=$(unlearn keys create ... | head -1)` printed the key inside the transaction: the broken pipe
    rolled it back, and the key shown was refused ever after (a probe, with PYTHONUNBUFFERED=1)."""
    command = f"{UNLEARN} keys create --tenant default --scopes jobs:read 2>&1 | head -1"
    env = cli.env(PYTHONUNBUFFERED="1")
    keys = [subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=120)
            for _ in range(3)]  # fmt: skip
    for made in keys:
        key = made.stdout.strip()
        assert key.startswith("ul_"), made.stdout
        assert cli.run("versions", "digits", "--api-key", key).returncode == 0, key


def test_the_cli_knows_the_same_scopes_as_the_server() -> None:
    from service.cli import SCOPE_NAMES

    assert tuple(SCOPE_NAMES) == tuple(SCOPES)


def test_without_a_key_a_local_server_uses_the_embedded_admin_key_and_a_remote_one_gets_none(
    cli: Cli,
) -> None:
    local = cli.run("versions", "digits", UNLEARN_API_KEY="")
    assert local.returncode == 0, local.stderr
    remote = cli.run("versions", "digits", "--url", "http://unlearn.invalid:8000", UNLEARN_API_KEY="")
    assert remote.returncode == 4
    assert one_error_line(remote).startswith("error: no API key: pass --api-key or set UNLEARN_API_KEY")


def test_keys_create_and_revoke_through_the_api_with_an_admin_key(cli: Cli) -> None:
    created = cli.run("keys", "create", "--api", "--scopes", "audit:read", "--name", "compliance")
    assert created.returncode == 0, created.stderr
    key = created.stdout.splitlines()[0]
    key_id = created.stdout.split("id=")[1].split()[0]
    assert "tenant=default" in created.stdout
    assert cli.run("audit", "verify", "--api-key", key).returncode == 0
    assert cli.run("keys", "revoke", "--api", key_id).returncode == 0
    revoked = cli.run("audit", "verify", "--api-key", key)
    assert revoked.returncode == 4

    no_admin = cli.run("keys", "create", "--api", "--scopes", "admin", "--api-key", key)
    assert no_admin.returncode == 4 and "rejected" in one_error_line(no_admin)
    assert cli.run("keys", "create", "--scopes", "admin").returncode == 2  # the database way needs --tenant


def test_a_request_whose_samples_were_all_forgotten_already_says_no_new_version_was_needed(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    """Its job publishes nothing and the request points at the version that had forgotten them: the CLI
    printed that version as "new version v2 ... (parent v1)" with an empty "before" column (a probe)."""
    ids = tmp_path / "again.txt"
    ids.write_text("\n".join(IDS[:3]) + "\n")
    result = cli.run("request", "digits", "--ids-file", str(ids), "--wait", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 already forgotten" in result.stdout
    assert re.search(r"^version: v\d+ \(no new version was needed\)$", result.stdout, re.MULTILINE)
    assert "new version v" not in result.stdout


def test_request_wait_with_a_product_key_follows_the_request_without_reading_jobs(
    cli: Cli, waited: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    created = cli.run("keys", "create", "--tenant", "default", "--scopes", "deletion:write")
    product_key = created.stdout.splitlines()[0]
    ids = tmp_path / "ids.txt"
    ids.write_text("digits-0600\ndigits-0601\n")
    result = cli.run(
        "request", "digits", "--ids-file", str(ids), "--wait", "--api-key", product_key, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "completed: model digits, 2 sample(s)" in result.stdout
    assert "(metrics need a key with jobs:read)" in result.stdout


def test_datasets_and_a_model_are_registered_from_the_command_line_and_the_model_becomes_ready(
    cli: Cli, tmp_path: Path
) -> None:
    """The demo's own data and v1 weights, brought in again the way a product would bring its own."""
    var = cli.stack.var_dir
    up = cli.run("datasets", "upload", str(var / "datasets" / "digits-train.npz"), "--name", "cli-train")
    assert up.returncode == 0, up.stderr
    assert re.search(r"cli-train' \(npz\): 1437 samples, sha256 [0-9a-f]{64}", up.stdout), up.stdout
    by_path = cli.run("datasets", "register", str(var / "datasets" / "digits-test.npz"), "--name", "cli-test")
    assert by_path.returncode == 0, by_path.stderr
    listed = cli.run("datasets")
    assert "cli-train" in listed.stdout and "cli-test" in listed.stdout
    [ckpt] = [p for p in (var / "checkpoints").rglob("v1*.safetensors") if "uploads" not in p.parts]
    registered = cli.run(
        "models", "register", "--checkpoint", str(ckpt), "--name", "digits-cli",
        "--architecture", "small_cnn", "--arch-kwargs", '{"in_channels": 1, "image_size": 8}',
        "--num-classes", "10", "--train", "cli-train", "--test", "cli-test", "--wait", timeout=300,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr + registered.stdout
    assert re.search(r"digits-cli\s.*small_cnn\s.*ready", registered.stdout), registered.stdout
    missing = cli.run("models", "register", "--checkpoint", str(ckpt), "--name", "x", "--train", "nope")
    assert missing.returncode != 0 and "no dataset has the id or name 'nope'" in missing.stderr


def registered(cli: Cli, name: str) -> dict[str, Any]:
    """The dataset the server holds under `name` (exactly one)."""
    with cli.stack.client() as c:
        [ds] = [d for d in c.get("/v1/datasets").json() if d["name"] == name]
    return cast(dict[str, Any], ds)


def test_a_webdataset_shard_uploads_as_kind_webdataset_from_its_suffix(cli: Cli, tmp_path: Path) -> None:
    import io

    import numpy as np
    import webdataset as wds  # type: ignore[import-untyped,unused-ignore]
    from PIL import Image

    shard = tmp_path / "faces-000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in range(12):
            png = io.BytesIO()
            Image.fromarray(np.full((8, 8), 20 * i, dtype=np.uint8)).save(png, format="PNG")
            sink.write({"__key__": f"face-{i:02d}", "png": png.getvalue(), "cls": str(i % 3)})
    up = cli.run("datasets", "upload", str(shard), "--name", "cli-shard")
    assert up.returncode == 0, up.stderr
    assert re.search(r"'cli-shard' \(webdataset\): 12 samples, sha256 [0-9a-f]{64}", up.stdout), up.stdout
    ds = registered(cli, "cli-shard")
    assert (ds["kind"], ds["num_samples"]) == ("webdataset", 12)
    assert ds["uri"].endswith(".tar") and Path(ds["uri"]).read_bytes() == shard.read_bytes()


def test_text_files_upload_with_their_tokenizer(cli: Cli, tmp_path: Path) -> None:
    rows = sentences(24, 0)
    tokenizer = tmp_path / "tokenizer.json"
    train_tokenizer(tokenizer, [text for text, _ in rows])
    write_jsonl(tmp_path / "news.jsonl", rows, "j")
    write_text_csv(tmp_path / "news.csv", rows[:18], "c")
    for file, name, kind, n in (
        ("news.jsonl", "cli-jsonl", "jsonl", 24),
        ("news.csv", "cli-csv", "text_csv", 18),
    ):
        up = cli.run(
            "datasets", "upload", str(tmp_path / file), "--name", name, "--tokenizer", str(tokenizer),
            "--features", '{"type": "text", "max_length": 8}',
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        assert f"'{name}' ({kind}): {n} samples" in up.stdout, up.stdout
        ds = registered(cli, name)
        assert (ds["kind"], ds["num_samples"]) == (kind, n)
        # The tokenizer went up with the texts: stored beside them, pinned by its sha256.
        features = ds["features"]
        assert features["type"] == "text" and features["max_length"] == 8
        assert Path(features["tokenizer"]).read_bytes() == tokenizer.read_bytes()
        assert Path(features["tokenizer"]).parent == Path(ds["uri"]).parent


def test_a_tokenizer_with_an_image_file_and_an_unknown_suffix_are_usage_errors(
    cli: Cli, tmp_path: Path
) -> None:
    npz = cli.stack.var_dir / "datasets" / "digits-train.npz"
    tokenizer = tmp_path / "tokenizer.json"
    train_tokenizer(tokenizer, [text for text, _ in sentences(6, 0)])
    with_npz = cli.run("datasets", "upload", str(npz), "--name", "cli-no", "--tokenizer", str(tokenizer))
    assert with_npz.returncode == 2
    assert one_error_line(with_npz) == (
        "error: --tokenizer applies to text datasets (kind jsonl or text_csv), not to npz"
    )
    forced = cli.run(
        "datasets", "upload", str(npz), "--name", "cli-no", "--kind", "webdataset",
        "--tokenizer", str(tokenizer),
    )  # fmt: skip
    assert forced.returncode == 2 and "not to webdataset" in one_error_line(forced)
    odd = tmp_path / "samples.bin"
    odd.write_bytes(npz.read_bytes())
    unknown = cli.run("datasets", "upload", str(odd), "--name", "cli-no")
    assert unknown.returncode == 2
    assert "cannot tell the kind of samples.bin from its suffix" in one_error_line(unknown)
    with cli.stack.client() as c:
        assert all(d["name"] != "cli-no" for d in c.get("/v1/datasets").json())  # nothing was sent


def test_a_refused_upload_is_its_one_error_line_and_nothing_before_it(cli: Cli) -> None:
    """Piped, the upload's cleared progress bar had left a blank line above the error."""
    npz = cli.stack.var_dir / "datasets" / "digits-train.npz"
    refused = cli.run("datasets", "upload", str(npz), "--name", "bad name!")
    assert refused.returncode == 6
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1, repr(refused.stderr)


def test_the_cli_knows_the_same_dataset_kinds_as_the_server() -> None:
    from typing import get_args, get_type_hints

    from models.declarations import TEXT_KINDS as MODEL_TEXT_KINDS
    from service.api.routes.datasets import upload_dataset
    from service.api.schemas.registry import DatasetCreate
    from service.cli.parser import REGISTER_KIND_NAMES, UPLOAD_KIND_NAMES, build_parser
    from service.cli.registration import TEXT_KINDS

    assert get_args(DatasetCreate.model_fields["kind"].annotation) == REGISTER_KIND_NAMES
    upload_kind = get_type_hints(upload_dataset, include_extras=True)["kind"]  # Annotated[Literal | None]
    [kinds] = [a for a in get_args(get_args(upload_kind)[0]) if a is not type(None)]
    assert get_args(kinds) == UPLOAD_KIND_NAMES
    assert TEXT_KINDS == MODEL_TEXT_KINDS
    args = build_parser().parse_args(["datasets", "register", "/data/x", "--name", "x", "--kind", "npy"])
    assert args.kind == "npy"
    # `unlearn audit export | head` wanted -o (a probe): stdout by default, as `certificate` and `audit head`
    assert build_parser().parse_args(["audit", "export"]).output == "-"


def test_db_upgrade_and_check_say_what_they_found(tmp_path: Path) -> None:
    """Both printed nothing on success: an operator running the migration step by hand could not tell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
    env["UNLEARN_VAR_DIR"] = str(tmp_path / "var")
    upgraded = subprocess.run([UNLEARN, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert upgraded.returncode == 0, upgraded.stderr
    where = f"sqlite:///{tmp_path / 'var' / 'unlearn.db'}"
    said = upgraded.stdout.strip()
    assert said.startswith(f"{where}: schema up to date, applied ") and "migration(s): 0001, 0002, " in said
    newest = upgraded.stdout.strip().rsplit(", ", 1)[1]
    again = subprocess.run([UNLEARN, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert again.stdout.strip() == f"{where}: schema up to date at {newest}, nothing to apply", again.stdout
    checked = subprocess.run([UNLEARN, "db", "check"], env=env, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.strip() == f"{where}: schema matches the tables"


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path: Path) -> None:
    """`unlearn ... | head` ended in a BrokenPipeError traceback, or "Exception ignored" and exit 120 (a
    probe): the command's work is done; it exits as a process SIGPIPE ended, 141, without a word."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
    env["UNLEARN_VAR_DIR"] = str(tmp_path / "var")
    proc = subprocess.Popen(
        [UNLEARN, "db", "upgrade"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command prints (it starts in a second or so)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == "", (proc.returncode, err)
    checked = subprocess.run([UNLEARN, "db", "check"], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"PORT": "abc"}, "error: setting PORT='abc': Input should be a valid integer"),
        ({"PORT": "99999"}, "error: setting PORT='99999': Input should be less than or equal to 65535"),
        (
            {"UNLEARN_PORT": "0"},
            "error: setting UNLEARN_PORT='0': Input should be greater than or equal to 1",
        ),
        ({"UNLEARN_WRITE_RATE_PER_KEY": "x"}, "error: setting UNLEARN_WRITE_RATE_PER_KEY='x': "),
        # never a password or a secret in the line (a review)
        ({"DATABASE_URL": "mysql://root:hunter2@db/x"}, "setting DATABASE_URL='mysql://root:***@db/x': "),
        ({"DATABASE_URL": "postgresql+asyncpg://h/x"}, "(sqlite://...), not 'postgresql+asyncpg'"),
        ({"UNLEARN_WEBHOOK_SECRET": "whsec_hunter2!!"}, "error: setting UNLEARN_WEBHOOK_SECRET: "),
        ({"UNLEARN_VAR_DIR": "/proc/no-such/var"}, "error: cannot make UNLEARN_VAR_DIR /proc/no-such/var: "),
    ],
)
def test_a_setting_the_server_verbs_cannot_use_is_one_line_and_exit_2(
    tmp_path: Path, setting: dict[str, str], says: str
) -> None:
    """Each was a traceback; PORT=99999 served on 34463 while announcing 99999 (a probe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
    env |= {"UNLEARN_VAR_DIR": str(tmp_path / "var"), **setting}
    result = subprocess.run([UNLEARN, "db", "check"], env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert says in line and "hunter2" not in line


def test_db_upgrade_that_postgresql_refuses_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """PostgreSQL refuses a migration's statement as a ProgrammingError, which was a traceback (a review)."""
    import uuid

    import psycopg

    from tests.helpers import pg_url, services_available

    reason = services_available()
    if reason:
        pytest.skip(reason)
    name = f"unlearn_cli_{uuid.uuid4().hex[:12]}"
    admin = "host=127.0.0.1 port=5432 user=postgres dbname=test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(
            f"host=127.0.0.1 port=5432 user=postgres dbname={name}", autocommit=True
        ) as conn:
            conn.execute("CREATE TABLE models (x integer)")  # a table of the first migration's, by hand
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
        env |= {"UNLEARN_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": pg_url(name)}
        refused = subprocess.run([UNLEARN, "db", "upgrade"], env=env, capture_output=True, text=True)
        assert refused.returncode == 1, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert (
            line.startswith("error: upgrade of the database ") and 'relation "models" already exists' in line
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_db_check_on_a_schema_behind_says_to_upgrade(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
    env["UNLEARN_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run([UNLEARN, "db", "check"], env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.endswith("Target database is not up to date. (run `unlearn db upgrade`)")


def test_keys_on_a_database_down_or_not_migrated_is_one_line(tmp_path: Path) -> None:
    """The first command of a production bootstrap printed a 157-line traceback, quoting the INSERT and its
    key hash, for a server that was full or a database not yet migrated (a probe)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
    env |= {"UNLEARN_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": "postgres://postgres@127.0.0.1:9/x"}
    create = [UNLEARN, "keys", "create", "--tenant", "acme", "--scopes", "admin"]
    down = subprocess.run(create, env=env, capture_output=True, text=True)
    assert down.returncode == 3, down.stderr
    [line] = down.stderr.strip().splitlines()
    assert line.startswith("error: cannot use the database postgresql+psycopg://postgres@127.0.0.1:9/x: ")
    (tmp_path / "var").mkdir(exist_ok=True)
    sqlite3.connect(tmp_path / "var" / "unlearn.db").close()  # there, with no tables
    env.pop("DATABASE_URL")
    bare = subprocess.run(create, env=env, capture_output=True, text=True)
    assert bare.returncode == 1 and bare.stdout == "", bare.stderr
    [line] = bare.stderr.strip().splitlines()
    assert "no such table: api_keys" in line and line.endswith("(has `unlearn db upgrade` run on it?)"), line
    assert "INSERT" not in line


def test_db_upgrade_on_a_database_it_cannot_reach_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """It was a 118-line traceback for a database not yet created; and `postgres://` (libpq's form) was a
    NoSuchModuleError. Nothing listens on port 9 here: the connection is refused."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "DATABASE_URL"}
    env |= {"UNLEARN_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": "postgres://postgres@127.0.0.1:9/x"}
    upgraded = subprocess.run([UNLEARN, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert upgraded.returncode == 3, upgraded.stderr
    [line] = upgraded.stderr.strip().splitlines()
    assert line.startswith("error: cannot use the database postgresql+psycopg://postgres@127.0.0.1:9/x: ")
    assert "(is it up, and created?)" in line
    # a database it reaches whose schema refuses a migration is no outage: exit 1, saying what failed
    (tmp_path / "var").mkdir(exist_ok=True)
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "unlearn.db")) as db:
        db.execute("CREATE TABLE models (x INTEGER)")  # a table of the first migration's, made by hand
        db.commit()
    env.pop("DATABASE_URL")
    refused = subprocess.run([UNLEARN, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert refused.returncode == 1, refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line == f"error: upgrade of the database sqlite:///{tmp_path / 'var' / 'unlearn.db'} failed: " + (
        "table models already exists"
    )
    from service.core.settings import Settings

    for bare in ("postgres://u@h/db", "postgresql://u@h/db"):  # psycopg2, the bare form's driver, is absent
        assert Settings(DATABASE_URL=bare).database_url == "postgresql+psycopg://u@h/db"  # type: ignore[call-arg]


def test_the_published_line_names_every_method_tried_and_worker_runs_apart() -> None:
    """It said "1 attempt(s)" for a job whose first method failed its gates and whose fallback published:
    the job's `attempts` counts worker runs, its `metrics.attempts` methods."""
    from service.cli.request import how_published, refusals

    job = {
        "method": "retrain",
        "attempts": 1,
        "metrics": {"attempts": [{"method": "finetune"}, {"method": "retrain"}]},
    }
    assert how_published(job) == "method retrain (methods tried in order: finetune, retrain)"
    assert how_published({**job, "attempts": 2, "metrics": {}}) == "method retrain, 2 worker runs"
    refused = {"method": "finetune", "passed": False, "gate_failures": ["test accuracy dropped 0.5 > 0.1"]}
    job["metrics"]["attempts"] = [refused, {"method": "retrain", "passed": True}]
    assert refusals(job) == ["  finetune refused: test accuracy dropped 0.5 > 0.1"]


def test_the_published_attempts_warnings_and_switched_off_classes_are_printed() -> None:
    from service.cli.request import published_notes

    refused = {"method": "finetune", "passed": False, "warnings": ["not this one"]}
    published = {"method": "ugradsl_plus", "passed": True, "warnings": ["2 of the 5 rows ..."],
                 "silenced_classes": [3, 7]}  # fmt: skip
    assert published_notes({"metrics": {"attempts": [refused, published]}}) == [
        "  warning: 2 of the 5 rows ...",
        "  switched off (deleted by an earlier job): class 3, 7",
    ]
    assert published_notes({"metrics": {"attempts": [{"method": "retrain", "passed": True}]}}) == []


def test_the_connection_flags_are_read_before_the_command_as_after_it() -> None:
    """`unlearn --url U models` was refused by argparse ("invalid choice"): a client's first try."""
    from service.cli.parser import build_parser

    parse = build_parser().parse_args
    assert parse(["--url", "http://a:1", "--api-key", "k", "models"]).url == "http://a:1"
    assert parse(["models", "--url", "http://b:2"]).url == "http://b:2"
    assert parse(["--url", "http://a:1", "models", "--url", "http://b:2"]).url == "http://b:2"  # the later
    assert parse(["models"]).url is None and parse(["models"]).api_key is None
    # the offline verbs too, which need none (refused after the verb: a probe)
    assert parse(["verify-certificate", "c.json", "--url", "http://b:2"]).url == "http://b:2"
    assert parse(["audit", "verify-export", "e", "--head", "h", "--public-key", "k", "--url", "u"]).url == "u"


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "soon"])
def test_a_wait_that_is_not_a_positive_finite_time_is_refused_before_anything_is_sent(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--timeout -1` registered the model, then gave up at once as a usage error; nan never timed out."""
    from service.cli.parser import build_parser

    for argv in (["request", "m", "--ids-file", "f", "--wait"], ["models", "register", "--wait"]):
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args([*argv, "--timeout", value])
        assert refused.value.code == 2 and "--timeout" in capsys.readouterr().err
    assert build_parser().parse_args(["request", "m", "--timeout", "2.5"]).timeout == 2.5


def test_a_server_command_refuses_the_client_connection_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """Read before any command, they were silently ignored by the ones that start the service."""
    from service.cli import main

    assert main(["--url", "http://a:1", "db", "check"]) == 2
    assert "--url and --api-key are for the client commands, not `db`" in capsys.readouterr().err
    assert main(["keys", "create", "--tenant", "t", "--scopes", "admin", "--url", "http://a:1"]) == 2
    assert "not `keys` (add --api to go through a server)" in capsys.readouterr().err
