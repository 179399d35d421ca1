"""What a failed job tells the client (`workers.runner.error_text`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from models.checkpoints import CheckpointWriteFailed
from service.core.db.engine import session_scope
from service.core.db.tables import ApiKey
from service.core.settings import Settings
from tests.conftest import Backend
from workers.runner import error_text


def test_a_database_error_says_what_the_database_said_without_the_statement(backend: Backend) -> None:
    """A job that failed on a statement showed every key of its tenant the SQL and its parameters (a probe
    read an INSERT into the audit log, rows of it, in a request's error)."""
    url = backend.settings().resolved_database_url
    row = {"tenant": "t", "name": "secret-name", "prefix": "p", "key_hash": "h" * 64, "scopes": ["admin"]}
    with session_scope(url) as s:
        s.add(ApiKey(**row))
    with pytest.raises(IntegrityError) as caught, session_scope(url) as s:
        s.add(ApiKey(**row))  # the same key hash again: a unique constraint
    said = error_text(caught.value)
    assert said.startswith("IntegrityError: the database refused a statement: "), said
    assert "INSERT" not in said and "secret-name" not in said and "\n" not in said
    assert "unique" in said.lower() or "duplicate" in said.lower(), said


def test_the_service_folders_in_an_error_are_named_not_spelt_out(tmp_path: Path) -> None:
    """A job's error is read by every key of its tenant: a checkpoint's or an uploaded file's absolute path
    told them the server's disk layout. A file under a data root the client registered keeps its path."""
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_STORAGE_DIR=str(tmp_path / "ckpt"))  # type: ignore[call-arg]
    uploaded = settings.dataset_dir / "ds_1" / "img-0001.png"
    said = error_text(FileNotFoundError(2, "No such file or directory", str(uploaded)), settings)
    assert (
        said
        == "FileNotFoundError: [Errno 2] No such file or directory: '<uploaded datasets>/ds_1/img-0001.png'"
    )
    full = CheckpointWriteFailed(
        f"could not write checkpoint {settings.checkpoint_dir / 'm' / 'v2.st'}: full"
    )
    assert (
        error_text(full, settings)
        == "CheckpointWriteFailed: could not write checkpoint <checkpoints>/m/v2.st: full"
    )
    theirs = "/srv/client-data/train/img-0001.png"
    assert theirs in error_text(FileNotFoundError(2, "No such file or directory", theirs), settings)
    assert str(tmp_path) not in error_text(OSError(f"{settings.var_dir.resolve()}/webhook-secret"), settings)


def test_a_service_folder_is_matched_whole_and_never_above_a_clients_data_root(tmp_path: Path) -> None:
    """Folders were replaced as text prefixes (a review): a data root /srv/unlearn-data beside a state
    folder /srv/unlearn read '<state folder>-data/...', and a storage folder / turned every slash of a path
    into '<checkpoints>'."""
    var, sibling = tmp_path / "unlearn", tmp_path / "unlearn-data"
    settings = Settings(  # type: ignore[call-arg]
        UNLEARN_VAR_DIR=str(var), UNLEARN_STORAGE_DIR=str(tmp_path / "ckpt"), UNLEARN_DATA_ROOTS=str(sibling)
    )

    def said(path: Path | str) -> str:
        return error_text(FileNotFoundError(2, "No such file or directory", str(path)), settings)

    assert str(sibling / "train" / "a.png") in said(sibling / "train" / "a.png")
    assert said(f"{tmp_path / 'ckpt'}2/m/v1.st").endswith(f"'{tmp_path / 'ckpt'}2/m/v1.st'")
    assert said(var / "webhook-secret").endswith("'<state folder>/webhook-secret'")
    inner = f"/mnt{settings.dataset_dir}/a.npz"  # a client's path that holds the folder's spelling inside
    assert inner in error_text(OSError(f"no such file: {inner}"), settings)
    assert error_text(OSError(f"cannot list {settings.checkpoint_dir}."), settings).endswith("<checkpoints>.")
    at_root = Settings(UNLEARN_VAR_DIR=str(var), UNLEARN_STORAGE_DIR="/")  # type: ignore[call-arg]
    whole = error_text(FileNotFoundError(2, "No such file or directory", "/data/train/a.png"), at_root)
    assert whole.endswith("'/data/train/a.png'"), whole
    inside = Settings(UNLEARN_VAR_DIR=str(var), UNLEARN_DATA_ROOTS=str(var / "client"))  # type: ignore[call-arg]
    assert str(var / "client" / "a.png") in error_text(OSError(str(var / "client" / "a.png")), inside)
