"""`unlearn run` supervises its worker: one killed with SIGKILL mid-flight is restarted (with whatever it
had started, its beat, gone with it), and requests are served again without anyone stepping in."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.helpers import group_alive, wait_until
from tests.stack import LiveStack, wait_for_request

pytestmark = pytest.mark.slow


def worker_pids(stack: LiveStack) -> list[int]:
    return [int(p) for p in re.findall(r"worker started \(pid (\d+)\)", stack.log_path.read_text())]


def ready(stack: LiveStack) -> bool:
    return httpx.get(f"{stack.base_url}/readyz", timeout=5).status_code == 200


def beat(stack: LiveStack) -> str:
    return str(httpx.get(f"{stack.base_url}/readyz", timeout=5).json()["beat"])


def group_members(pgid: int) -> list[int]:
    """The live processes of a process group (Linux /proc): the worker and, once forked, its beat."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:  # exited while we looked
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def described(pids: list[int]) -> str:
    """Each process as `pid ppid state cmdline`, for a failure message."""
    out = []
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            continue
        out.append(f"{pid} ppid={fields[1]} {fields[0]} {cmd}")
    return "; ".join(out) or "none"


def test_a_killed_worker_is_restarted_and_leaves_no_orphan(tmp_path: Path) -> None:
    stack = LiveStack(env={"UNLEARN_VAR_DIR": str(tmp_path / "var")}, log_path=tmp_path / "stack.log")
    stack.start()
    try:
        [first] = wait_until(lambda: worker_pids(stack), timeout=30, what="the worker to start")
        wait_until(lambda: ready(stack), timeout=60, what="/readyz to see the worker's heartbeat")
        wait_until(
            lambda: beat(stack) == "ok", timeout=60, what="/readyz to see the embedded beat's heartbeat"
        )
        os.kill(first, signal.SIGKILL)
        restarted = wait_until(
            lambda: [p for p in worker_pids(stack) if p != first], timeout=60, what="the worker to restart"
        )
        assert len(restarted) == 1
        wait_until(lambda: not group_alive(first), timeout=30, what="the killed worker's beat to be gone")
        assert "worker exited with code -9" in stack.log_path.read_text()
        with stack.client() as c:
            r = c.post("/v1/models/digits/deletion-requests", json={"sample_ids": ["digits-0007"]})
            assert r.status_code == 202, r.text
            done = wait_for_request(c, r.json()["id"], timeout=300)
        assert done["state"] == "completed", done
    finally:
        code = stack.stop()
    assert code == 0, stack.log()
    # SIGTERM (a service manager, Ctrl-C) stops the worker and its beat too.
    wait_until(lambda: not group_alive(restarted[0]), timeout=30, what="the worker and its beat to stop")


def test_a_killed_supervisor_takes_its_worker_with_it(tmp_path: Path) -> None:
    stack = LiveStack(env={"UNLEARN_VAR_DIR": str(tmp_path / "var")}, log_path=tmp_path / "stack.log")
    stack.start()
    worker = 0
    try:
        [worker] = wait_until(lambda: worker_pids(stack), timeout=30, what="the worker to start")
        # The worker forks its beat as it starts; a kill before that would prove nothing about the beat.
        wait_until(lambda: len(group_members(worker)) >= 2, timeout=60, what="the worker's beat to start")
        assert stack.proc is not None
        os.kill(stack.proc.pid, signal.SIGKILL)  # no `finally` runs: only the kernel can clean up
        stack.proc.wait(timeout=30)
        try:
            wait_until(lambda: not group_members(worker), timeout=30, what="the worker and its beat to die")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; left: {described(group_members(worker))}") from None
    finally:
        stack.stop()
        for pid in group_members(worker) if worker else ():  # a failed run leaves no orphan behind
            os.kill(pid, signal.SIGKILL)


def test_on_the_embedded_stack_a_job_whose_worker_was_killed_is_finished_by_its_replacement(
    tmp_path: Path,
) -> None:
    """The fault suite's SIGKILL-while-unlearning, on SQLite and the filesystem broker: the supervisor
    restarts the worker, whose predecessor's silent heartbeat frees the model's lease long before the
    lease itself would lapse."""
    from tests.e2e.recovery import Stopwatch

    env = {
        "UNLEARN_VAR_DIR": str(tmp_path / "var"),
        "UNLEARN_HEARTBEAT_SECONDS": "0.5",
        "UNLEARN_RECONCILE_SECONDS": "1",
        "UNLEARN_LEASE_SECONDS": "600",  # only the heartbeat can hand the job over in time
    }
    stack = LiveStack(env=env, log_path=tmp_path / "stack.log")
    stack.start()
    try:
        [first] = wait_until(lambda: worker_pids(stack), timeout=30, what="the worker to start")
        with stack.client() as c:
            assert (
                c.patch(
                    "/v1/models/digits", json={"default_params": {"epochs": 40, "retain_budget": 0}}
                ).status_code
                == 200
            )
            ids = [f"digits-{i:04d}" for i in range(5, 300, 10)]
            r = c.post("/v1/models/digits/deletion-requests", json={"sample_ids": ids})
            assert r.status_code == 202, r.text

            def mid_unlearning() -> dict[str, object] | None:
                job_id = c.get(f"/v1/deletion-requests/{r.json()['id']}").json()["job_id"]
                job = c.get(f"/v1/jobs/{job_id}").json() if job_id else None
                return job if job and job["phase"].startswith("unlearn") and job["progress"] > 0.15 else None

            job = wait_until(mid_unlearning, timeout=180, interval=0.2, what="the job to be mid-unlearning")
            os.kill(first, signal.SIGKILL)
            clock = Stopwatch()
            done = wait_for_request(c, r.json()["id"], timeout=300)
            clock.record("embedded: worker SIGKILLed while unlearning", "request completed")
            assert done["state"] == "completed", stack.log()
            assert c.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 2
            assert [v["version"] for v in c.get("/v1/models/digits/versions").json()] == ["v1", "v2"]
            assert c.get("/v1/audit/verify").json()["ok"] is True
            samples = c.get("/v1/models/digits/samples", params={"limit": 2000}).json()["items"]
            assert {s["sample_id"] for s in samples if s["forgotten_in"]} == set(ids)
    finally:
        stack.stop()


def test_a_second_run_on_a_port_in_use_exits_before_starting_a_worker(tmp_path: Path) -> None:
    """It printed "Serving on ...", and its worker and beat took tasks from the shared broker, before
    uvicorn found the port taken."""
    import socket
    import subprocess

    from tests.stack import UNLEARN

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "UNLEARN_VAR_DIR": str(tmp_path / "var"),
            "PORT": str(port),
            "UNLEARN_DEMO": "false",
        }
        done = subprocess.run([UNLEARN, "run"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"error: cannot serve on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "worker started" not in done.stdout and "Serving on" not in done.stdout
    assert not (tmp_path / "var").exists()  # nothing was set up either


@pytest.mark.parametrize("verb", ["run", "api"])
def test_a_server_refuses_to_start_on_a_signing_key_that_did_not_sign_the_logs_heads(
    tmp_path: Path, verb: str
) -> None:
    """A probe removed the key file and restarted the API: it made a new key without a word and signed
    heads with it, and every certificate saved before failed against the published key. Missing, foreign
    or unreadable, the key is refused in one line naming the setting, exit 2, before anything starts."""
    import socket
    import subprocess

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from service.core import transparency
    from service.core.db.engine import session_scope
    from service.core.settings import Settings
    from service.core.signing import load_or_create_key, public_key_b64
    from tests.factories import make_model
    from tests.helpers import migrated
    from tests.stack import UNLEARN

    settings = Settings(UNLEARN_VAR_DIR=str(tmp_path / "var"))  # type: ignore[call-arg]
    settings.var_dir.mkdir(parents=True)
    migrated(settings.resolved_database_url)
    signer = Ed25519PrivateKey.generate()
    with session_scope(settings.resolved_database_url) as s:
        make_model(s, name="toy")
        transparency.sign_head(s, signer, "default")
    with socket.socket() as probe:  # a free port: `run` binds before anything else
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "UNLEARN_VAR_DIR": str(settings.var_dir), "UNLEARN_DEMO": "false", "PORT": port}
    path = settings.signing_key_path
    for state, says in [
        ("missing", f"error: no signing key at {path}, and the audit log's heads were signed with "),
        ("foreign", f"error: the key at {path} ("),
        ("garbled", f"error: {path} is not an Ed25519 private key in PEM"),
    ]:
        path.unlink(missing_ok=True)
        if state == "foreign":
            load_or_create_key(path)
        elif state == "garbled":
            path.write_text("not a key")
        done = subprocess.run([UNLEARN, verb], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (state, done.stdout + done.stderr)
        assert done.stderr.startswith(says) and "UNLEARN_SIGNING_KEY_FILE" in done.stderr, done.stderr
        assert public_key_b64(signer)[:12] in done.stderr or state == "garbled"
        assert len(done.stderr.strip().splitlines()) == 1 and "Serving on" not in done.stdout
    assert path.read_text() == "not a key"  # nothing made a key of its own
