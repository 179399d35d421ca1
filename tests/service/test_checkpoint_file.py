"""The checkpoint download as the ASGI server meets it (`service.api.files.CheckpointFile`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from service.api.files import CheckpointFile


def _download(
    path: Path, *, on_start: Any = None, headers: list[tuple[bytes, bytes]] | None = None
) -> list[dict]:
    """The messages the response sends for a GET; ``on_start`` runs when its headers go out."""
    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(3600)  # the client never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.start" and on_start is not None:
            on_start()

    scope = {"type": "http", "method": "GET", "headers": headers or [], "asgi": {"spec_version": "2.4"}}
    response = CheckpointFile(path, media_type="application/octet-stream", headers={"ETag": '"x"'})
    asyncio.run(response(scope, receive, send))
    return sent


def test_a_checkpoint_deleted_once_its_headers_are_sent_is_still_sent_whole(tmp_path: Path) -> None:
    """Starlette opened the file only after sending the headers: a checkpoint deleted in between was a 200
    cut off after them (a probe deleting versions while downloading them)."""
    path = tmp_path / "v2.safetensors"
    body = bytes(range(256)) * 4000  # over one read chunk
    path.write_bytes(body)
    sent = _download(path, on_start=path.unlink)
    assert sent[0]["status"] == 200 and not path.exists()
    assert b"".join(m.get("body", b"") for m in sent[1:]) == body
    ranged = tmp_path / "v3.safetensors"
    ranged.write_bytes(body)
    sent = _download(ranged, on_start=ranged.unlink, headers=[(b"range", b"bytes=10-19")])
    assert sent[0]["status"] == 206 and b"".join(m.get("body", b"") for m in sent[1:]) == body[10:20]


def test_a_checkpoint_gone_before_it_is_opened_is_a_404_problem(tmp_path: Path) -> None:
    sent = _download(tmp_path / "gone.safetensors")
    assert sent[0]["status"] == 404
    assert b"deleted from storage" in b"".join(m.get("body", b"") for m in sent[1:])


def test_a_checkpoint_storage_cannot_read_is_a_503_problem(tmp_path: Path) -> None:
    sent = _download(tmp_path)  # a folder where the file should be: open() fails, as on a lost volume
    assert sent[0]["status"] == 503
    assert b"cannot be read from storage" in b"".join(m.get("body", b"") for m in sent[1:])


def test_a_checkpoint_storage_cannot_read_is_a_503_through_the_route(tmp_path: Path) -> None:
    """The route hashes the file before it is served: an OSError there (a path through a regular file,
    permissions, a lost volume) was a 500 (a review)."""
    from sqlalchemy import select

    from service.core.db.engine import session_scope
    from service.core.db.tables import ModelVersion
    from service.core.settings import Settings
    from tests.liveapp import serve_toy

    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"x")
    with serve_toy(Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"))) as (app, key):  # type: ignore[call-arg]
        with session_scope(app.db) as s:
            s.scalars(select(ModelVersion)).one().checkpoint_uri = str(blocker / "v1.safetensors")
        with app.client(key) as c:
            r = c.get("/v1/models/toy/versions/v1/checkpoint")
    assert r.status_code == 503 and "cannot be read from storage" in r.json()["detail"], r.text
