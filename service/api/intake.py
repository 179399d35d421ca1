"""Group commit for deletion-request intake: the requests that one API process receives while it is
writing are written together, in the next transaction.

A request's cost was mostly round trips to the database (BEGIN, the model, the training-set lookup, two
INSERTs, the wake, COMMIT), each paid per request. Here the route hands its request to the process's
`GroupCommit` and awaits its own outcome; a writer (one at a time by default) takes everything pending
and runs `deletions.accept_many` on it in a worker thread: the same round trips, paid once per batch. No
timer
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

# Batches one process writes at once. Two (one checked while the other commits) measured no better than
# one on a loaded two-core machine, and one makes the biggest batches.
WRITERS = 1
Outcome = Accepted | ProblemError | Exception
_Waiting = tuple[Submission, "asyncio.Future[Accepted]"]


@dataclass
class _Queue:
    """What one event loop has pending, and its writer tasks."""

    pending: list[_Waiting] = field(default_factory=list)
    writers: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # held, so none is collected mid-run


class GroupCommit:
    """The process's intake queue (`app.state.intake`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        celery: Celery,
        policy: IntakePolicy,
        writers: int = WRITERS,
    ) -> None:
        self.sessions, self.celery, self.policy, self.max_writers = sessions, celery, policy, writers
        self.batches = self.largest = 0
        # Per event loop: a server has one, but a test client may start a loop per request.
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )

    def stats(self) -> tuple[int, int]:
        """(batches written, the largest batch) in this process so far, over every loop."""
        return self.batches, self.largest

    async def submit(self, submission: Submission) -> Accepted:
        """Queue the request, start a writer unless one is running, and wait for this request's outcome
        (raised, if it is an error). A caller that goes away (client disconnect) does not withdraw its
        request: it is written with its batch, as a request already in a route's thread would be."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(loop, _Queue())
        future: asyncio.Future[Accepted] = loop.create_future()
        queue.pending.append((submission, future))
        if queue.writers < self.max_writers:
            queue.writers += 1
            task = loop.create_task(self._write_pending(queue))
            queue.tasks.add(task)
            task.add_done_callback(queue.tasks.discard)
        return await future

    async def _write_pending(self, queue: _Queue) -> None:
        """Write batches until nothing is pending, then give up this writer's place (in the same step
        as the last check, so a request queued after it finds the place free and starts a writer)."""
        try:
            await self._drain(queue)
        finally:
            queue.writers -= 1

    async def _drain(self, queue: _Queue) -> None:
        while queue.pending:
            batch, queue.pending = queue.pending, []
            self.batches, self.largest = self.batches + 1, max(self.largest, len(batch))
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
