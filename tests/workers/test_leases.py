"""The per-model lease (`workers.leases`): one owner at a time, taken over only once it lapses. Each step
runs in its own transaction and the outcome is read back from the database."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta

import pytest
import torch

from service.core.db import clock
from service.core.db.engine import session_scope
from service.core.db.tables import Model, utcnow
from tests.conftest import Backend
from tests.factories import make_model
from workers import leases
from workers.validate import worker_short_of


@pytest.fixture
def model_id(db_url: str) -> str:
    with session_scope(db_url) as s:
        return make_model(s, name="toy").id


def acquire(url: str, model_id: str, owner: str, seconds: float = 60) -> bool:
    with session_scope(url) as s:
        return leases.acquire(s, model_id, owner, seconds)


def renew(url: str, model_id: str, owner: str, seconds: float = 60) -> bool:
    with session_scope(url) as s:
        return leases.renew(s, model_id, owner, seconds)


def release(url: str, model_id: str, owner: str) -> None:
    with session_scope(url) as s:
        leases.release(s, model_id, owner)


def lease(url: str, model_id: str) -> tuple[str | None, datetime | None]:
    with session_scope(url) as s:
        m = s.get_one(Model, model_id)
        return m.lease_owner, m.lease_expires_at


def set_expiry(url: str, model_id: str, expires_at: datetime) -> None:
    with session_scope(url) as s:
        s.get_one(Model, model_id).lease_expires_at = expires_at


def test_a_new_model_has_no_lease(db_url: str, model_id: str) -> None:
    assert lease(db_url, model_id) == (None, None)


def test_a_free_lease_is_acquired_until_now_plus_its_duration(db_url: str, model_id: str) -> None:
    before = utcnow()
    assert acquire(db_url, model_id, "A", seconds=60)
    owner, expires = lease(db_url, model_id)
    assert owner == "A"
    assert expires is not None and before + timedelta(seconds=60) <= expires <= utcnow() + timedelta(
        seconds=60
    )


def test_a_live_lease_refuses_a_second_owner(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    held = lease(db_url, model_id)
    assert not acquire(db_url, model_id, "B")
    assert lease(db_url, model_id) == held


def test_the_owner_may_reacquire_its_live_lease_and_extends_it(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A", seconds=10)
    _, first = lease(db_url, model_id)
    assert acquire(db_url, model_id, "A", seconds=3600)
    owner, second = lease(db_url, model_id)
    assert owner == "A"
    assert first is not None and second is not None and second - first > timedelta(seconds=3000)


def test_an_expired_lease_is_taken_over_by_another_owner(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    set_expiry(db_url, model_id, utcnow() - timedelta(seconds=1))
    assert acquire(db_url, model_id, "B")
    owner, expires = lease(db_url, model_id)
    assert owner == "B" and expires is not None and expires > utcnow()


def test_a_lease_expiring_in_the_future_is_still_live(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    set_expiry(db_url, model_id, utcnow() + timedelta(seconds=5))
    assert not acquire(db_url, model_id, "B")


def test_acquiring_a_lease_of_an_unknown_model_fails(db_url: str) -> None:
    assert not acquire(db_url, "no-such-model", "A")


def test_the_lease_of_one_model_does_not_block_another(db_url: str, model_id: str) -> None:
    with session_scope(db_url) as s:
        other = make_model(s, name="other").id
    assert acquire(db_url, model_id, "A")
    assert acquire(db_url, other, "B")
    assert lease(db_url, model_id)[0] == "A" and lease(db_url, other)[0] == "B"


def test_renew_by_the_owner_extends_the_lease(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A", seconds=10)
    _, first = lease(db_url, model_id)
    assert renew(db_url, model_id, "A", seconds=3600)
    owner, second = lease(db_url, model_id)
    assert owner == "A"
    assert first is not None and second is not None and second - first > timedelta(seconds=3000)


def test_renew_by_a_non_owner_returns_false_and_changes_nothing(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    held = lease(db_url, model_id)
    assert not renew(db_url, model_id, "B", seconds=3600)
    assert lease(db_url, model_id) == held


def test_renew_of_a_free_lease_returns_false_and_does_not_take_it(db_url: str, model_id: str) -> None:
    assert not renew(db_url, model_id, "A")
    assert lease(db_url, model_id) == (None, None)


def test_renew_by_an_owner_whose_lease_was_taken_over_returns_false(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    set_expiry(db_url, model_id, utcnow() - timedelta(seconds=1))
    assert acquire(db_url, model_id, "B")
    assert not renew(db_url, model_id, "A")
    assert lease(db_url, model_id)[0] == "B"


def test_renew_of_a_lapsed_lease_nobody_took_revives_it(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    set_expiry(db_url, model_id, utcnow() - timedelta(seconds=1))
    assert renew(db_url, model_id, "A", seconds=60)
    owner, expires = lease(db_url, model_id)
    assert owner == "A" and expires is not None and expires > utcnow()


def test_release_by_the_owner_frees_the_lease_for_anyone(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    release(db_url, model_id, "A")
    assert lease(db_url, model_id) == (None, None)
    assert acquire(db_url, model_id, "B")


def test_release_by_a_non_owner_does_nothing(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "A")
    held = lease(db_url, model_id)
    release(db_url, model_id, "B")
    assert lease(db_url, model_id) == held
    assert not acquire(db_url, model_id, "B")


def test_worker_identities_are_unique_even_within_one_process() -> None:
    names = [leases.worker_identity() for _ in range(1000)]
    assert len(set(names)) == len(names)


# -- takeover of a silent worker's lease ----------------------------------------------------------------


def beat_at(url: str, worker: str, seconds_ago: float) -> None:
    """A heartbeat row as the worker process `worker` (`host:pid`) left it `seconds_ago`."""
    from service.core import liveness
    from service.core.db.tables import WorkerHeartbeat

    with session_scope(url) as s:
        liveness.beat(s, worker)
    with session_scope(url) as s:
        s.get_one(WorkerHeartbeat, worker).last_seen = utcnow() - timedelta(seconds=seconds_ago)


def test_a_live_lease_of_a_silent_worker_is_taken_over_before_it_expires(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "host:41:aaaa", seconds=600)
    beat_at(db_url, "host:41", seconds_ago=30)
    with session_scope(db_url) as s:
        assert leases.acquire(s, model_id, "host:42:bbbb", 60, takeover_after=6)
    assert lease(db_url, model_id)[0] == "host:42:bbbb"


def test_a_lease_of_a_worker_that_beats_is_not_taken_over(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "host:41:aaaa", seconds=600)
    beat_at(db_url, "host:41", seconds_ago=1)
    beat_at(db_url, "host:4", seconds_ago=300)  # a silent worker whose name is a prefix of the holder's
    with session_scope(db_url) as s:
        assert not leases.acquire(s, model_id, "host:42:bbbb", 60, takeover_after=6)
    assert lease(db_url, model_id)[0] == "host:41:aaaa"


def test_a_worker_taking_a_lease_after_an_outage_is_not_judged_by_the_beats_it_missed(
    db_url: str, model_id: str
) -> None:
    """Just after a database outage a worker's heartbeat row is as old as the outage: it took a model's
    lease, and another worker, reading that row, took the lease from it a second later (a probe: the job
    recorded "worker died" and lost an attempt, with both workers alive). Taking a lease refreshes the
    taker's row; a worker that then stays silent is still taken over."""
    beat_at(db_url, "host:41", seconds_ago=30)  # host:41 has not beaten since the outage began
    assert acquire(db_url, model_id, "host:41:aaaa", seconds=600)
    with session_scope(db_url) as s:
        assert not leases.acquire(s, model_id, "host:42:bbbb", 60, takeover_after=6)
    assert lease(db_url, model_id)[0] == "host:41:aaaa"
    beat_at(db_url, "host:41", seconds_ago=30)  # its lease renewed through the outage: not silent either
    assert renew(db_url, model_id, "host:41:aaaa")
    with session_scope(db_url) as s:
        assert not leases.acquire(s, model_id, "host:42:bbbb", 60, takeover_after=6)
    beat_at(db_url, "host:41", seconds_ago=30)  # silent since: taken over as before
    with session_scope(db_url) as s:
        assert leases.acquire(s, model_id, "host:42:bbbb", 60, takeover_after=6)


def test_a_lease_whose_holder_never_beat_runs_its_full_term(db_url: str, model_id: str) -> None:
    assert acquire(db_url, model_id, "host:41:aaaa", seconds=600)
    with session_scope(db_url) as s:
        assert not leases.acquire(s, model_id, "host:42:bbbb", 60, takeover_after=6)


def test_the_reconciler_finds_a_silent_workers_model(db_url: str, model_id: str) -> None:
    from tests.factories import submit_request
    from workers import claims

    with session_scope(db_url) as s:
        submit_request(s, s.get_one(Model, model_id), ["toy-0000"])
    assert acquire(db_url, model_id, "host:41:aaaa", seconds=600)
    with session_scope(db_url) as s:
        assert claims.models_needing_work(s, takeover_after=6) == []  # never beat: its lease stands
    beat_at(db_url, "host:41", seconds_ago=30)
    with session_scope(db_url) as s:
        assert claims.models_needing_work(s) == []  # without takeover, only expiry frees it
        assert claims.models_needing_work(s, takeover_after=6) == [model_id]


# -- cleaning up after a publish that raised -------------------------------------------------------------


def test_a_checkpoint_is_deleted_only_when_the_database_says_no_version_uses_it(
    db_url: str, model_id: str
) -> None:
    from workers.jobstore import JobStore

    store = JobStore(db_url, "job", "owner")
    assert not store.may_delete_checkpoint("/nonexistent/v1.safetensors")  # v1 of the factory model
    assert store.may_delete_checkpoint("/nonexistent/v2-orphan.safetensors")
    unreachable = JobStore("postgresql+psycopg://postgres@127.0.0.1:1/none", "job", "owner")
    assert not unreachable.may_delete_checkpoint("/nonexistent/v2-orphan.safetensors")  # cannot ask: keep


def test_killed_workers_heartbeats_are_pruned_and_live_ones_kept(db_url: str) -> None:
    """Each SIGKILLed worker left its row for ever (a clean shutdown drops its own): a production probe
    found 9 dead rows of 11 after a few restarts."""
    from service.core import liveness
    from service.core.db.tables import WorkerHeartbeat

    beat_at(db_url, "host:1", seconds_ago=7200)
    beat_at(db_url, "host:2", seconds_ago=5)
    with session_scope(db_url) as s:
        assert liveness.prune(s, 3600) == 1
    with session_scope(db_url) as s:
        assert [w.name for w in s.query(WorkerHeartbeat)] == ["host:2"]


@pytest.mark.parametrize(
    ("error", "short"),
    [
        (MemoryError("Cannot allocate memory (os error 12)"), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"), True),
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x64 and 32x10)"), False),
        (ValueError("x must be a numeric array"), False),
    ],
)
def test_a_validation_that_ran_out_of_memory_or_disk_is_retried_not_the_models_fault(
    error: BaseException, short: bool
) -> None:
    """A probe's 17M-parameter MLP under a 4 GB address-space limit was made invalid for good by a
    MemoryError, and validated at 4.45 GB: a worker short of memory or disk is retried as a worker's death
    is (the lease goes back, the attempt counts), a model that does not fit its data is invalid."""
    assert worker_short_of(error) is short


# -- hosts whose clocks disagree ------------------------------------------------------------------------


def test_hosts_whose_clocks_disagree_judge_leases_and_heartbeats_alike(backend: Backend) -> None:
    """A worker on a host half an hour fast saw a live worker's lease as lapsed and its heartbeat as half
    an hour old, and took the model over; one half an hour slow wrote a lease and heartbeats that others
    read as long gone. On PostgreSQL every host reads the database's clock. (Two minutes of silence here:
    freezegun takes seconds to patch a process that has torch loaded.)"""
    if backend.name != "postgres":
        pytest.skip("the embedded default (SQLite) is one host: its own clock is the shared one")
    from freezegun import freeze_time

    from service.core import liveness
    from tests.factories import submit_request
    from workers import claims

    url = backend.env["DATABASE_URL"]
    with session_scope(url) as s:
        model = make_model(s, name="toy")
        submit_request(s, model, ["toy-0000"])
        model_id = model.id
    assert acquire(url, model_id, "right:1:aaaa", seconds=600)
    with session_scope(url) as s:
        liveness.beat(s, "right:1")

    fast = freeze_time(datetime.now(UTC) + timedelta(minutes=30), tick=True)  # a host half an hour fast
    with fast, session_scope(url) as s:
        assert claims.models_needing_work(s, takeover_after=120) == []
        assert not leases.acquire(s, model_id, "fast:2:bbbb", 600, takeover_after=120)
        assert liveness.alive(s, within_s=120) == 1
    clock.forget_offset()  # the offset measured under the fake clock: back to the real one
    assert lease(url, model_id)[0] == "right:1:aaaa"

    release(url, model_id, "right:1:aaaa")
    with freeze_time(datetime.now(UTC) - timedelta(minutes=30), tick=True):  # this one half an hour slow
        assert acquire(url, model_id, "slow:3:cccc", seconds=600)
        with session_scope(url) as s:
            liveness.beat(s, "slow:3")
    clock.forget_offset()
    with session_scope(url) as s:
        assert not leases.acquire(s, model_id, "right:4:dddd", 600, takeover_after=120)
        assert claims.models_needing_work(s, takeover_after=120) == []
    owner, expires = lease(url, model_id)
    assert owner == "slow:3:cccc" and expires is not None and expires > utcnow() + timedelta(seconds=300)
