"""Fault tests against real PostgreSQL, a real (private) Redis and separate worker processes: nothing an
accepted request asks for is ever lost or done twice."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from service.core.db.engine import engine_for, session_scope
from service.core.db.tables import Model
from tests.cluster import REDIS_SERVER, Cluster
from tests.conftest import _create_pg_database, _drop_pg_database
from tests.helpers import PG_ADMIN_URL, services_available, wait_until

pytestmark = pytest.mark.slow

TRAIN_IDS = [f"digits-{i:04d}" for i in range(1437)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    reason = services_available()
    if reason:
        pytest.skip(reason)
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed, so the fault tests cannot run a private Redis")
    name = _create_pg_database()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    c = Cluster(tmp=tmp_path, database_url=url)
    try:
        c.start_redis()
        c.key = c.setup()  # type: ignore[attr-defined]
        yield c
    finally:
        c.close()
        engine_for(url).dispose()
        _drop_pg_database(name)


def client(c: Cluster) -> httpx.Client:
    return httpx.Client(base_url=c.base_url, headers={"Authorization": f"Bearer {c.key}"}, timeout=30)  # type: ignore[attr-defined]


def submit(http: httpx.Client, ids: list[str], model: str = "digits") -> dict[str, Any]:
    r = http.post(f"/v1/models/{model}/deletion-requests", json={"sample_ids": ids})
    assert r.status_code == 202, r.text
    return r.json()


def all_finished(http: httpx.Client, request_ids: list[str]) -> list[dict[str, Any]] | None:
    bodies = [http.get(f"/v1/deletion-requests/{rid}").json() for rid in request_ids]
    return bodies if all(b["state"] in ("completed", "failed", "cancelled") for b in bodies) else None


def versions(http: httpx.Client, model: str = "digits") -> list[dict[str, Any]]:
    return http.get(f"/v1/models/{model}/versions").json()


def assert_line(vs: list[dict[str, Any]]) -> None:
    """Versions form a line: v1, v2, ... each the parent of the next."""
    assert [v["number"] for v in vs] == list(range(1, len(vs) + 1))
    for prev, nxt in zip(vs, vs[1:], strict=False):
        assert nxt["parent"] == prev["version"]


def slow_down(c: Cluster, epochs: int) -> None:
    """Make the demo model's unlearning long enough to interrupt (several seconds)."""
    with session_scope(c.database_url) as s:
        s.execute(update(Model).values(default_params={"epochs": epochs}))


def test_requests_survive_a_broker_outage(cluster: Cluster) -> None:
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    cluster.stop_redis()
    ids = random.Random(1).sample(TRAIN_IDS, 100)
    with client(cluster) as http:
        reqs = [submit(http, ids[2 * i : 2 * i + 2]) for i in range(50)]  # 202 with the broker down
        assert {r["state"] for r in reqs} == {"received"}
        cluster.start_redis()
        done = wait_until(
            lambda: all_finished(http, [r["id"] for r in reqs]),
            timeout=300,
            interval=1,
            what="50 requests after the broker came back",
        )
        assert {d["state"] for d in done} == {"completed"}, cluster.log("w1")
        assert len({d["id"] for d in done}) == 50
        vs = versions(http)
        assert_line(vs)
        assert vs[-1]["forgotten_count"] == 100  # every ID forgotten exactly once


def test_a_killed_worker_job_is_finished_by_another(cluster: Cluster) -> None:
    slow_down(cluster, epochs=40)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    with client(cluster) as http:
        req = submit(http, random.Random(2).sample(TRAIN_IDS, 30))

        def running_job() -> dict[str, Any] | None:
            body = http.get(f"/v1/deletion-requests/{req['id']}").json()
            if body["job_id"] is None:
                return None
            job = http.get(f"/v1/jobs/{body['job_id']}").json()
            return job if job["phase"].startswith("unlearn") and job["progress"] > 0.15 else None

        job = wait_until(running_job, timeout=120, interval=0.2, what="the job to be mid-unlearning")
        cluster.kill_worker("w1", signal.SIGKILL)
        cluster.start_worker("w2", beat=True)
        [done] = wait_until(
            lambda: all_finished(http, [req["id"]]),
            timeout=300,
            interval=1,
            what="the job to finish on the second worker",
        )
        assert done["state"] == "completed", cluster.log("w2")
        final = http.get(f"/v1/jobs/{job['id']}").json()
        assert final["state"] == "completed" and final["attempts"] == 2
        vs = versions(http)
        assert [v["version"] for v in vs] == ["v1", "v2"]  # exactly one new version


def test_restarting_the_api_loses_nothing(cluster: Cluster) -> None:
    slow_down(cluster, epochs=10)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    with client(cluster) as http:
        reqs = [submit(http, random.Random(3).sample(TRAIN_IDS, 10)) for _ in range(3)]
    cluster.stop_api()
    cluster.start_api()
    with client(cluster) as http:
        done = wait_until(
            lambda: all_finished(http, [r["id"] for r in reqs]),
            timeout=300,
            interval=1,
            what="requests submitted before the API restart",
        )
        assert {d["state"] for d in done} == {"completed"}


def test_concurrent_requests_coalesce_into_few_jobs_and_a_line_of_versions(cluster: Cluster) -> None:
    slow_down(cluster, epochs=2)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    ids = random.Random(4).sample(TRAIN_IDS, 400)
    chunks = [ids[2 * i : 2 * i + 2] for i in range(200)]
    with client(cluster) as http:

        def one_client(k: int) -> list[str]:
            with client(cluster) as h:
                return [submit(h, chunks[j])["id"] for j in range(k, 200, 20)]

        with ThreadPoolExecutor(max_workers=20) as pool:
            request_ids = [rid for part in pool.map(one_client, range(20)) for rid in part]
        assert len(set(request_ids)) == 200
        done = wait_until(
            lambda: all_finished(http, request_ids), timeout=600, interval=2, what="200 concurrent requests"
        )
        assert {d["state"] for d in done} == {"completed"}
        jobs = {d["job_id"] for d in done}
        vs = versions(http)
        assert_line(vs)
        assert vs[-1]["forgotten_count"] == 400
        forgotten = set()
        cursor = None
        while True:
            page = http.get(
                "/v1/models/digits/samples", params={"limit": 2000, **({"cursor": cursor} if cursor else {})}
            ).json()
            forgotten |= {s["sample_id"] for s in page["items"] if s["forgotten_in"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert forgotten == set(ids)
        print(f"200 requests from 20 clients -> {len(jobs)} jobs, {len(vs) - 1} new versions")
        assert len(jobs) <= 20


def test_two_models_run_concurrently_on_two_workers(cluster: Cluster) -> None:
    register_second_model(cluster)
    slow_down(cluster, epochs=15)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    cluster.start_worker("w2")
    with client(cluster) as http:
        wait_until(
            lambda: http.get("/v1/models/digits-copy").json()["status"] == "ready",
            timeout=120,
            what="the second model to be validated by a worker",
        )
        a = submit(http, random.Random(5).sample(TRAIN_IDS, 20), model="digits")
        b = submit(http, random.Random(6).sample(TRAIN_IDS, 20), model="digits-copy")
        done = wait_until(
            lambda: all_finished(http, [a["id"], b["id"]]),
            timeout=300,
            interval=1,
            what="both models' requests",
        )
        assert {d["state"] for d in done} == {"completed"}
        ja, jb = (http.get(f"/v1/jobs/{d['job_id']}").json() for d in done)
        start_a, end_a = datetime.fromisoformat(ja["started_at"]), datetime.fromisoformat(ja["finished_at"])
        start_b, end_b = datetime.fromisoformat(jb["started_at"]), datetime.fromisoformat(jb["finished_at"])
        assert start_a < end_b and start_b < end_a, (ja, jb)  # the two jobs overlapped in time


def register_second_model(c: Cluster) -> None:
    """A second model through the registration API: the demo's data and v1 weights under another name."""
    c.start_api()
    var = c.tmp / "var"
    [ckpt] = list((var / "checkpoints").rglob("v1*.safetensors"))
    with client(c) as http:
        train = http.post(
            "/v1/datasets",
            json={"name": "d-train", "kind": "npz", "uri": str(var / "datasets" / "digits-train.npz")},
        ).json()
        test = http.post(
            "/v1/datasets",
            json={"name": "d-test", "kind": "npz", "uri": str(var / "datasets" / "digits-test.npz")},
        ).json()
        spec = {
            "name": "digits-copy",
            "architecture": "small_cnn",
            "arch_kwargs": {"in_channels": 1, "image_size": 8},
            "num_classes": 10,
            "train_dataset": train["id"],
            "test_dataset": test["id"],
        }
        r = http.post(
            "/v1/models",
            data={"spec": json.dumps(spec)},
            files={"checkpoint": ("v1.safetensors", ckpt.read_bytes())},
        )
        assert r.status_code == 202, r.text
    c.stop_api()
    c.api = None
