"""Group commit for deletion-request intake: the requests that one API process receives while it is
writing are written together, in the next transaction.

A request's cost was mostly round trips to the database (BEGIN, the model, the training-set lookup, two
INSERTs, the wake, COMMIT), each paid per request. Here the route hands its request to the process's
`GroupCommit` and awaits its own outcome; one writer at a time takes everything pending and runs
`deletions.accept_many` on it in a worker thread: the same round trips, paid once per batch. No timer
holds a request back: a batch is whatever arrived while the previous one was being written, so a lone
request is written at once and a busy process writes bigger batches.

The guarantees are those of one request alone: a request is answered 202 only once its row and audit
event are committed; a refused request (unknown IDs, a model not ready) writes nothing and is answered
with its own error without failing the others. Should a whole batch fail for any other reason (a
constraint, a bug), its requests are written again one by one, so one bad request cannot take its batch
down with it; only a database outage reaches every request of a batch (each is answered 503).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from celery import Celery
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.core.deletions import Accepted, IntakePolicy, Submission, accept_many
from service.core.errors import ProblemError

Outcome = Accepted | ProblemError | Exception
_Waiting = tuple[Submission, "asyncio.Future[Accepted]"]


@dataclass
class _Queue:
    """What one event loop has pending, and its writer task (at most one)."""

    pending: list[_Waiting] = field(default_factory=list)
    writer: asyncio.Task[None] | None = None


class GroupCommit:
    def __init__(self, sessions: sessionmaker[Session], celery: Celery, policy: IntakePolicy) -> None:
        self.sessions, self.celery, self.policy = sessions, celery, policy
        # Per event loop: a server has one, but a test client may start a loop per request.
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, submission: Submission) -> Accepted:
        """Queue the request, start a writer unless one is running, and wait for this request's outcome
        (raised, if it is an error). A caller that goes away (client disconnect) does not withdraw its
        request: it is written with its batch, as a request already in a route's thread would be."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(loop, _Queue())
        future: asyncio.Future[Accepted] = loop.create_future()
        queue.pending.append((submission, future))
        if queue.writer is None or queue.writer.done():
            queue.writer = loop.create_task(self._write_pending(queue))
        return await future

    async def _write_pending(self, queue: _Queue) -> None:
        """Write batches until nothing is pending. (Between the last check and this task's end nothing
        else runs on the loop, so a request queued later finds the task done and starts another.)"""
        while queue.pending:
            batch, queue.pending = queue.pending, []
            try:
                outcomes = await run_in_threadpool(self.write, [s for s, _ in batch])
            except Exception as exc:  # noqa: BLE001 - each caller is answered with it (a 503 if the DB is down)
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(outcome, Accepted):
                    future.set_result(outcome)
                else:
                    future.set_exception(outcome)

    def write(self, batch: Sequence[Submission]) -> list[Outcome]:
        """One transaction for the batch; if it fails other than for an outage, one per request."""
        try:
            return list(self._accept(batch))
        except (OperationalError, InterfaceError):
            raise  # the database is unreachable: every request hears it (503), retrying one by one won't help
        except Exception:
            if len(batch) == 1:
                raise
        outcomes: list[Outcome] = []
        for submission in batch:
            try:
                outcomes.extend(self._accept([submission]))
            except Exception as exc:  # noqa: BLE001 - this request's own failure, answered to it alone
                outcomes.append(exc)
        return outcomes

    def _accept(self, batch: Sequence[Submission]) -> list[Accepted | ProblemError]:
        with self.sessions() as session:
            return accept_many(session, self.celery, batch, self.policy)
