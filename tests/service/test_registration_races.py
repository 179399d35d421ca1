"""Registrations that carry large uploads: no write lock is held while a file is received or copied (on
SQLite every transaction holds the database's write lock), and two registrations racing for one model
name end as one success and one 409, never a 500 or a leftover file."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import UploadFile
from safetensors.numpy import save as save_safetensors
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.api.routes.models import register_model_route
from service.core.db.engine import session_scope, sessionmaker_for
from service.core.db.tables import ApiKey, Model
from service.core.keys import create_key
from service.core.queue import make_celery
from service.core.settings import Settings
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.liveapp import LiveApp, prepared, read_response, serve

CHECKPOINT = save_safetensors({"w": np.zeros((256, 256), dtype=np.float32)})  # 256 KiB


def spec(name: str, train: str, test: str) -> str:
    return json.dumps(
        {"name": name, "architecture": "mlp", "num_classes": 10, "train_dataset": train, "test_dataset": test}
    )


def seeded(settings: Settings) -> tuple[str, str, str]:
    """A tenant with the datasets of model `toy`; returns (admin key, train id, test id)."""
    with session_scope(prepared(settings).resolved_database_url) as s:
        toy = make_model(s, name="toy")
        return make_key(s, scopes=("admin",)), toy.train_dataset_id, toy.test_dataset_id


def test_no_write_lock_is_held_while_a_checkpoint_is_copied(tmp_path: Path) -> None:
    """The route itself, called with an upload whose first read tries another write (on its own
    connection, waiting at most 0.2 s for the lock): the write must not find the database locked."""
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE="q-lock")  # type: ignore[call-arg]
    _, train, test = seeded(settings)
    url = settings.resolved_database_url
    with session_scope(url) as s:
        admin = s.scalars(select(ApiKey)).one()
    impatient = create_engine(url, connect_args={"timeout": 0.2})
    outcomes: list[str] = []

    class WritesWhileCopied(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if not outcomes:
                try:
                    with Session(impatient) as other, other.begin():
                        create_key(other, tenant="default", scopes=["jobs:read"])
                    outcomes.append("written")
                except OperationalError as exc:
                    outcomes.append(str(exc.orig))
            return super().read(size)

    session = sessionmaker_for(url)()
    try:
        out = register_model_route(
            spec=spec("copied", train, test),
            checkpoint=UploadFile(WritesWhileCopied(CHECKPOINT), filename="v1.safetensors"),
            session=session,
            settings=settings,
            celery=make_celery(settings, fail_fast=True),
            key=admin,
        )
    finally:
        session.close()
        impatient.dispose()
    assert outcomes == ["written"]
    assert out.name == "copied" and out.status == "validating"


def multipart(path: str, name: str, train: str, test: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of an upload to `path`, built by httpx (sent by hand, a piece at a time)."""
    if path == "/v1/models":
        req = httpx.Request(
            "POST",
            f"http://x{path}",
            data={"spec": spec(name, train, test)},
            files={"checkpoint": ("v1.safetensors", CHECKPOINT)},
        )
    else:
        buf = io.BytesIO()
        np.savez(buf, x=np.zeros((3, 2)), y=np.arange(3), ids=np.array(["a", "b", "c"]))
        req = httpx.Request(
            "POST", f"http://x{path}", data={"name": name}, files={"file": ("d.npz", buf.getvalue())}
        )
    return dict(req.headers), req.read()


@pytest.mark.parametrize("path", ["/v1/models", "/v1/datasets/upload"])
def test_other_writes_proceed_while_an_upload_is_received(tmp_path: Path, path: str) -> None:
    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"), UNLEARN_QUEUE="q-mid")  # type: ignore[call-arg]
    admin, train, test = seeded(settings)
    headers, body = multipart(path, "held", train, test)
    with serve(settings) as app, app.connect() as sock, app.client(admin) as c:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n"
        head += f"Content-Type: {headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[: len(body) // 2])  # the upload is now in progress
        other = c.post("/v1/keys", json={"scopes": ["jobs:read"]}, timeout=5)
        assert other.status_code == 201, other.text
        sock.sendall(body[len(body) // 2 :])
        status, _, answer = read_response(sock)
    assert status in (201, 202), answer


@pytest.fixture
def racing(backend: Backend) -> Iterator[tuple[LiveApp, str, str, str]]:
    admin, train, test = seeded(backend.settings())
    with serve(backend.settings()) as app:
        yield app, admin, train, test


def test_two_registrations_racing_for_one_name_get_one_success_and_one_409(
    racing: tuple[LiveApp, str, str, str],
) -> None:
    app, admin, train, test = racing
    rounds = 4
    for i in range(rounds):
        barrier = threading.Barrier(2)

        def register(_: int, name: str = f"race-{i}", barrier: threading.Barrier = barrier) -> httpx.Response:
            with app.client(admin) as c:
                req = c.build_request(
                    "POST",
                    "/v1/models",
                    data={"spec": spec(name, train, test)},
                    files={"checkpoint": ("v1.safetensors", CHECKPOINT)},
                )
                barrier.wait(timeout=10)
                return c.send(req)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(register, range(2)))
        assert sorted(r.status_code for r in answers) == [202, 409], [r.text for r in answers]
        [conflict] = [r for r in answers if r.status_code == 409]
        assert conflict.headers["content-type"].startswith("application/problem+json")
        assert f"a model named 'race-{i}' already exists" in conflict.json()["detail"]
    with session_scope(app.db) as s:
        assert s.scalar(select(func.count()).select_from(Model).where(Model.name.like("race-%"))) == rounds
    # The losers' checkpoints were removed: one stored file per registered model.
    assert len(list((app.settings.checkpoint_dir / "uploads").iterdir())) == rounds
