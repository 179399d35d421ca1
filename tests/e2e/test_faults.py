"""Fault tests against real PostgreSQL, a real (private) Redis and separate worker processes: nothing an
accepted request asks for is ever lost or done twice, versions stay one line, the audit log verifies.
Each fault's recovery time is recorded and printed as a table at the end of the run."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from service.core.db.engine import engine_for, session_scope
from service.core.db.tables import Model
from tests.cluster import REDIS_SERVER, Cluster, PrivatePostgres
from tests.conftest import _create_pg_database, _drop_pg_database
from tests.e2e.recovery import Stopwatch
from tests.helpers import pg_url, services_available, wait_until

pytestmark = pytest.mark.slow

TRAIN_IDS = [f"digits-{i:04d}" for i in range(1437)]


@contextlib.contextmanager
def running(tmp_path: Path, url: str, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A private Redis and a migrated database with the demo model; processes are the test's to start."""
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed, so the fault tests cannot run a private Redis")
    c = Cluster(tmp=tmp_path, database_url=url, extra_env=extra_env or {})
    try:
        c.start_redis()
        c.key = c.setup()  # type: ignore[attr-defined]
        without_gates(c)
        yield c
    finally:
        c.close()
        engine_for(url).dispose()


def without_gates(c: Cluster) -> None:
    """These tests are about what survives a fault, not about the method's quality: a job whose test
    accuracy lands a few samples lower on another CPU's floating point must not fail them. The gates have
    tests of their own (tests/workers/test_gates.py)."""
    with session_scope(c.database_url) as s:
        s.execute(update(Model).values(gates={}))


@contextlib.contextmanager
def shared_postgres_database() -> Iterator[str]:
    reason = services_available()
    if reason:
        pytest.skip(reason)
    name = _create_pg_database()
    try:
        yield pg_url(name)
    finally:
        _drop_pg_database(name)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, which it may stop and start (skipped where none can run)."""
    reason = PrivatePostgres.unavailable()
    if reason:
        pytest.skip(reason)
    pg = PrivatePostgres()
    pg.init()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with shared_postgres_database() as url, running(tmp_path, url) as c:
        yield c


def client(c: Cluster) -> httpx.Client:
    return httpx.Client(base_url=c.base_url, headers={"Authorization": f"Bearer {c.key}"}, timeout=30)  # type: ignore[attr-defined]


def submit(http: httpx.Client, ids: list[str], model: str = "digits") -> dict[str, Any]:
    r = http.post(f"/v1/models/{model}/deletion-requests", json={"sample_ids": ids})
    assert r.status_code == 202, r.text
    return r.json()


def all_finished(http: httpx.Client, request_ids: list[str]) -> list[dict[str, Any]] | None:
    bodies = [http.get(f"/v1/deletion-requests/{rid}").json() for rid in request_ids]
    return bodies if all(b["state"] in ("completed", "failed", "cancelled") for b in bodies) else None


def assert_completed(done: list[dict[str, Any]], c: Cluster) -> None:
    """Every request completed; if not, the failure says why (their errors, the workers' log tails)."""
    errors = {d["error"] for d in done if d["state"] != "completed"}
    logs = {name: c.log(name) for name in ("w1", "w2")}
    assert {d["state"] for d in done} == {"completed"}, (errors, logs)


def versions(http: httpx.Client, model: str = "digits") -> list[dict[str, Any]]:
    return http.get(f"/v1/models/{model}/versions").json()


def assert_line(vs: list[dict[str, Any]]) -> None:
    """Versions form a line: v1, v2, ... each the parent of the next."""
    assert [v["number"] for v in vs] == list(range(1, len(vs) + 1))
    for prev, nxt in zip(vs, vs[1:], strict=False):
        assert nxt["parent"] == prev["version"]


def forgotten_ids(http: httpx.Client, model: str = "digits") -> set[str]:
    forgotten: set[str] = set()
    cursor = None
    while True:
        params = {"limit": 2000, **({"cursor": cursor} if cursor else {})}
        page = http.get(f"/v1/models/{model}/samples", params=params).json()
        forgotten |= {s["sample_id"] for s in page["items"] if s["forgotten_in"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return forgotten


def assert_intact(http: httpx.Client, requested: set[str]) -> None:
    """The invariants every fault must leave: versions in one line, each requested ID forgotten exactly
    once (the last version's count is the number of distinct IDs), and the audit log verifies."""
    vs = versions(http)
    assert_line(vs)
    assert forgotten_ids(http) == requested
    assert vs[-1]["forgotten_count"] == len(requested)
    report = http.get("/v1/audit/verify").json()
    assert report["ok"] is True, report


def job_in_phase(http: httpx.Client, request_id: str, phase: str, min_progress: float = 0.0) -> Any:
    body = http.get(f"/v1/deletion-requests/{request_id}").json()
    if body["job_id"] is None:
        return None
    job = http.get(f"/v1/jobs/{body['job_id']}").json()
    return job if job["phase"].startswith(phase) and job["progress"] >= min_progress else None


def at_publish(http: httpx.Client, request_id: str) -> Any:
    """The request's job, once it has reached its publish step (a failpoint holds it there)."""
    return wait_until(lambda: job_in_phase(http, request_id, "publish"), timeout=180, interval=0.2,
                      what="the job to reach its publish step")  # fmt: skip


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
        clock = Stopwatch()
        done = wait_until(
            lambda: all_finished(http, [r["id"] for r in reqs]),
            timeout=300,
            interval=0.5,
            what="50 requests after the broker came back",
        )
        clock.record("Redis stopped, 50 requests, Redis started", "all 50 completed")
        assert_completed(done, cluster)
        assert len({d["id"] for d in done}) == 50
        assert_intact(http, set(ids))


def test_a_killed_worker_job_is_finished_by_another(cluster: Cluster) -> None:
    slow_down(cluster, epochs=40)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    with client(cluster) as http:
        ids = random.Random(2).sample(TRAIN_IDS, 30)
        req = submit(http, ids)
        job = wait_until(
            lambda: job_in_phase(http, req["id"], "unlearn", 0.15),
            timeout=120,
            interval=0.2,
            what="the job to be mid-unlearning",
        )
        cluster.kill_worker("w1", signal.SIGKILL)
        clock = Stopwatch()
        cluster.start_worker("w2", beat=True)
        wait_until(
            lambda: http.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 2,
            timeout=120,
            interval=0.2,
            what="the second worker to take the job over",
        )
        clock.record("worker SIGKILLed while unlearning", "job taken over by another worker")
        [done] = wait_until(
            lambda: all_finished(http, [req["id"]]),
            timeout=300,
            interval=0.5,
            what="the job to finish on the second worker",
        )
        clock.record("worker SIGKILLed while unlearning", "request completed")
        assert done["state"] == "completed", cluster.log("w2")
        final = http.get(f"/v1/jobs/{job['id']}").json()
        assert final["state"] == "completed" and final["attempts"] == 2
        assert [v["version"] for v in versions(http)] == ["v1", "v2"]  # exactly one new version
        assert_intact(http, set(ids))


def test_a_worker_killed_while_publishing_leaves_one_version_and_no_loss(cluster: Cluster) -> None:
    slow_down(cluster, epochs=2)
    cluster.start_api()
    # This worker stops for a minute between writing the checkpoint and committing the version.
    cluster.start_worker("w1", beat=True, env={"UNLEARN_FAILPOINTS": "publish.before_commit=sleep(60)"})
    with client(cluster) as http:
        ids = random.Random(7).sample(TRAIN_IDS, 25)
        req = submit(http, ids)
        job = at_publish(http, req["id"])
        folder = cluster.tmp / "var" / "checkpoints"
        wait_until(
            lambda: len(list(folder.rglob("v2-*.safetensors"))) == 1, timeout=60, what="the checkpoint"
        )
        cluster.kill_worker("w1", signal.SIGKILL)
        clock = Stopwatch()
        cluster.start_worker("w2", beat=True)
        [done] = wait_until(
            lambda: all_finished(http, [req["id"]]),
            timeout=300,
            interval=0.5,
            what="the job to be published by the second worker",
        )
        clock.record("worker SIGKILLed while publishing", "request completed")
        assert done["state"] == "completed", cluster.log("w2")
        final = http.get(f"/v1/jobs/{job['id']}").json()
        assert final["attempts"] == 2 and final["result_version"] == "v2"
        vs = versions(http)
        assert [v["version"] for v in vs] == ["v1", "v2"]
        # The dead worker's file is an orphan nobody points at; the published one loads by its hash.
        published = http.get("/v1/models/digits/versions/v2/checkpoint")
        assert published.status_code == 200
        assert_intact(http, set(ids))


def test_restarting_the_api_loses_nothing(cluster: Cluster) -> None:
    slow_down(cluster, epochs=10)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    with client(cluster) as http:
        reqs = [submit(http, random.Random(3).sample(TRAIN_IDS, 10)) for _ in range(3)]
    cluster.stop_api()
    cluster.start_api()
    clock = Stopwatch()
    with client(cluster) as http:
        done = wait_until(
            lambda: all_finished(http, [r["id"] for r in reqs]),
            timeout=300,
            interval=0.5,
            what="requests submitted before the API restart",
        )
        clock.record("API restarted with 3 requests in flight", "all 3 completed")
        assert_completed(done, cluster)
        assert_line(versions(http))
        assert http.get("/v1/audit/verify").json()["ok"] is True


def test_two_workers_racing_for_one_model_coalesce_requests_into_a_line_of_versions(
    cluster: Cluster,
) -> None:
    slow_down(cluster, epochs=2)
    cluster.start_api()
    cluster.start_worker("w1", beat=True)
    cluster.start_worker("w2")  # both are sent the model; the lease lets one run it at a time
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
        assert_completed(done, cluster)
        jobs = {d["job_id"] for d in done}
        vs = versions(http)
        assert_intact(http, set(ids))
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
        assert_completed(done, cluster)
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


# -- the database restarted, the checkpoint disk full ------------------------------------------------------


def test_a_postgresql_restart_mid_job_loses_nothing(tmp_path: Path) -> None:
    with private_postgres() as pg, running(tmp_path, pg.url) as c:
        slow_down(c, epochs=30)
        c.start_api()
        c.start_worker("w1", beat=True)
        with client(c) as http:
            first_ids = random.Random(8).sample(TRAIN_IDS, 30)
            first = submit(http, first_ids)
            wait_until(
                lambda: job_in_phase(http, first["id"], "unlearn", 0.1),
                timeout=180,
                interval=0.2,
                what="the job to be mid-unlearning",
            )
            status = f"/v1/deletion-requests/{first['id']}"
            assert http.get(status).status_code == 200  # the status poll's own pooled connection
            pg.stop()
            down = http.post("/v1/models/digits/deletion-requests", json={"sample_ids": ["digits-1400"]})
            assert down.status_code == 503, down.text  # not a 500: the client should retry
            assert down.headers["retry-after"] and "database is unavailable" in down.json()["detail"]
            polled = http.get(status)  # its connection died with the server: a 503, not a 500
            assert polled.status_code == 503, polled.text
            pg.start()
            # The dead connection was dropped, not handed out again: the poll recovers by itself.
            wait_until(lambda: http.get(status).status_code == 200, timeout=60, interval=0.2,
                       what="the status poll answering again")  # fmt: skip
            clock = Stopwatch()
            later_ids = [i for i in random.Random(9).sample(TRAIN_IDS, 40) if i not in first_ids][:10]

            def accepted() -> dict[str, Any] | None:
                r = http.post("/v1/models/digits/deletion-requests", json={"sample_ids": later_ids})
                return r.json() if r.status_code == 202 else None

            later = wait_until(accepted, timeout=60, interval=0.2, what="a request accepted again")
            clock.record("PostgreSQL restarted mid-job", "a new request accepted")
            done = wait_until(
                lambda: all_finished(http, [first["id"], later["id"]]),
                timeout=300,
                interval=0.5,
                what="the requests from before and after the restart",
            )
            clock.record("PostgreSQL restarted mid-job", "both requests completed")
            assert_completed(done, c)
            assert_intact(http, set(first_ids) | set(later_ids))


def test_a_database_outage_at_publish_hands_the_job_back_without_costing_an_attempt(tmp_path: Path) -> None:
    """The job's commit fails while PostgreSQL is down. It had waited out its lease frozen and then counted
    as a worker's death (three such outages failed a job); now the worker hands it back once the database
    answers and resumes it at once, at no attempt's cost (a probe's finding)."""
    with private_postgres() as pg, running(tmp_path, pg.url) as c:
        c.start_api()
        c.start_worker("w1", beat=True, env={"UNLEARN_FAILPOINTS": "publish.before_commit=sleep(8)"})
        with client(c) as http:
            ids = random.Random(10).sample(TRAIN_IDS, 20)
            req = submit(http, ids)
            job = at_publish(http, req["id"])
            stopped_at = datetime.now(UTC)
            pg.stop()
            log = c.tmp / "w1.log"  # the whole file: the heartbeats' tracebacks fill Cluster.log's tail
            wait_until(lambda: "the database went away" in log.read_text(errors="replace"), timeout=60,
                       interval=0.2, what="the worker to meet the outage")  # fmt: skip
            pg.start()
            clock = Stopwatch()
            status = f"/v1/deletion-requests/{req['id']}"  # the API's dead connections go first: 503s
            wait_until(lambda: http.get(status).status_code == 200, timeout=60, interval=0.2,
                       what="the API answering again")  # fmt: skip
            [done] = wait_until(lambda: all_finished(http, [req["id"]]), timeout=300, interval=0.5,
                                what="the job to be published after the outage")  # fmt: skip
            clock.record("PostgreSQL down at publish", "request completed")
            assert done["state"] == "completed", c.log("w1")
            final = http.get(f"/v1/jobs/{job['id']}").json()
            causes = [i["cause"] for i in final["metrics"]["interrupted"]]
            assert (causes, final["attempts"]) == (["database unavailable"], 1), final
            # the resumed job keeps its first start: its duration is the client's wait
            assert datetime.fromisoformat(final["started_at"]) < stopped_at, final
            assert_intact(http, set(ids))


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `folder`: a disk that really fills up (needs the right to mount)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({mounted.stderr.strip() or 'not permitted'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write zeros until the file system refuses (ENOSPC); return the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_a_full_checkpoint_disk_waits_for_space_then_fails_cleanly_and_a_retry_publishes(
    tmp_path: Path,
) -> None:
    """A full volume is an outage, not the job's fault: an attempt that cannot write its checkpoint waits
    for space (a lease here: 10 s), heartbeat going on, and writes again once some is freed, publishing
    without anyone's retry (it had failed the job and its requests at once: a client probe); past the
    wait it hands the job back at no attempt's cost, and three such attempts fail it, cleanly, and an
    admin's retry publishes once space is freed."""
    env = {"UNLEARN_STORAGE_DIR": "", "UNLEARN_LEASE_SECONDS": "10", "UNLEARN_HEARTBEAT_SECONDS": "1"}
    with (
        small_disk(tmp_path / "ckpt", "8m") as disk,
        shared_postgres_database() as url,
        running(tmp_path, url, {**env, "UNLEARN_STORAGE_DIR": str(disk)}) as c,
    ):
        before = {p.name for p in disk.rglob("*") if p.is_file()}
        filler = fill(disk)
        c.start_api()
        c.start_worker("w1", beat=True)
        with client(c) as http:
            ids = random.Random(10).sample(TRAIN_IDS, 20)
            req = submit(http, ids)
            [failed] = wait_until(
                lambda: all_finished(http, [req["id"]]), timeout=300, interval=0.5, what="the job to fail"
            )
            job = http.get(f"/v1/jobs/{failed['job_id']}").json()
            assert (failed["state"], job["state"]) == ("failed", "failed")
            assert "No space left on device" in job["error"], job["error"]
            assert "3 attempts in a row ended in outages, this one for want of storage" in job["error"]
            assert str(disk) not in job["error"] and "<checkpoints>/" in job["error"], job["error"]
            causes = [e["cause"] for e in job["metrics"]["interrupted"]]
            assert causes == ["storage unavailable"] * 3, job["metrics"]["interrupted"]
            assert [v["version"] for v in versions(http)] == ["v1"]  # nothing half-published
            left = {p.name for p in disk.rglob("*") if p.is_file()}
            assert left == before | {"filler"}, left  # no temporary or orphan checkpoint left behind
            filler.unlink()  # the operator frees space and retries the job
            clock = Stopwatch()
            assert job["retryable"] is True
            retried = http.post(f"/v1/jobs/{job['id']}/retry")
            assert (retried.status_code, retried.json()["retryable"]) == (200, False)
            [done] = wait_until(
                lambda: all_finished(http, [req["id"]]),
                timeout=300,
                interval=0.5,
                what="the retried job",
            )
            clock.record("checkpoint disk full during publish", "retried job completed after space freed")
            assert done["state"] == "completed", c.log("w1")
            assert_intact(http, set(ids))
            # full again; freed while the attempt waits: published with no retry, the wait on the record
            filler = fill(disk)
            waits = c.log("w1").count("storage is short")
            more = random.Random(11).sample(sorted(set(TRAIN_IDS) - set(ids)), 20)
            second = submit(http, more)
            wait_until(
                lambda: c.log("w1").count("storage is short") > waits, timeout=300, interval=0.2,
                what="the attempt to wait for space",
            )  # fmt: skip
            filler.unlink()
            [done] = wait_until(
                lambda: all_finished(http, [second["id"]]), timeout=300, interval=0.5, what="the job"
            )
            assert done["state"] == "completed", c.log("w1")
            job = http.get(f"/v1/jobs/{done['job_id']}").json()
            assert not job["metrics"].get("interrupted") and job["attempts"] == 1, job  # the same attempt
            assert_intact(http, set(ids) | set(more))
            # remounted read-only (EROFS), then writable: nothing is freed, the periodic retry writes
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            waits = c.log("w1").count("storage is short")
            last = random.Random(12).sample(sorted(set(TRAIN_IDS) - set(ids) - set(more)), 20)
            third = submit(http, last)
            wait_until(
                lambda: c.log("w1").count("storage is short") > waits, timeout=300, interval=0.2,
                what="the attempt to wait on the read-only volume",
            )  # fmt: skip
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            [done] = wait_until(
                lambda: all_finished(http, [third["id"]]), timeout=300, interval=0.5, what="the job"
            )
            assert done["state"] == "completed", c.log("w1")
            assert_intact(http, set(ids) | set(more) | set(last))
            # full again, and an admin cancels the job while it waits: it stops in that wait, not after
            # a hand-back or a later attempt, and nothing of it is published
            filler = fill(disk)
            waits = c.log("w1").count("storage is short")
            fourth = submit(http, random.Random(13).sample(sorted(set(TRAIN_IDS) - set(ids) - set(more)
                                                                  - set(last)), 20))  # fmt: skip
            wait_until(
                lambda: c.log("w1").count("storage is short") > waits, timeout=300, interval=0.2,
                what="the attempt to wait for space",
            )  # fmt: skip
            job_id = http.get(f"/v1/deletion-requests/{fourth['id']}").json()["job_id"]
            assert http.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
            [done] = wait_until(
                lambda: all_finished(http, [fourth["id"]]), timeout=300, interval=0.5, what="the cancel"
            )
            job = http.get(f"/v1/jobs/{job_id}").json()
            assert (done["state"], job["state"], job["attempts"]) == ("cancelled", "cancelled", 1), job
            assert not job["metrics"].get("interrupted"), job["metrics"]  # stopped inside the wait
            assert job["phase"].startswith("publish"), job
            filler.unlink()
            assert_intact(http, set(ids) | set(more) | set(last))
