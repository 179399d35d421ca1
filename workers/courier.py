"""Webhook deliveries off the job loop: a few threads per worker process post them, so a receiver that is
slow to answer never holds a job up.

A worker runs one task at a time (one job, and the embedded worker is a solo pool), and deliveries were
tasks like jobs: a probe's receiver that answered a byte every 5 s held every tenant's deletions behind
its one request for a minute. The delivery task now hands its request to these threads and returns at
once; an attempt that fails is sent back to the broker with its backoff, as Celery's own retry did. The
threads are daemons: a worker that stops sends the attempts it holds, queued or in flight, back to the
broker (``hand_back``); one that dies without a word leaves them pending in the database for the
reconciler (``claims.stale_webhooks``), as it does for a task the broker lost.

Receivers take turns: attempts wait per receiver (host and port) and the threads serve them round-robin,
at most ``PER_HOST`` of them on one. With one first-come queue, a backlog to one slow receiver (a tenant's
hundred deletions, each attempt held to the timeout) held every courier and delayed other tenants'
webhooks by minutes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown
from sqlalchemy import select

from service.core.callbacks import DEFAULT_PORTS
from service.core.db.engine import session_scope
from service.core.db.tables import DeletionRequest
from service.core.queue import send_deliver_webhook
from service.core.settings import Settings, get_settings
from workers import webhooks
from workers.celery_app import app

log = logging.getLogger(__name__)

COURIERS = 4  # deliveries in flight per worker process
PER_HOST = 2  # of them on one receiver (host and port): a slow receiver holds at most these
MAX_BACKOFF_S = 300


@dataclass(frozen=True)
class _Attempt:
    request_id: str
    tries: int  # attempts before this one
    settings: Settings
    broker: Celery  # where a failed attempt is sent back to


class _Inbox:
    """Attempts waiting per receiver (host and port), handed out round-robin over the receivers, at most
    ``PER_HOST`` in flight on one; it also knows which attempt each thread is posting, under the same lock,
    so a stop's ``hold`` misses none (one taken between two separate locks was in neither list)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._waiting: dict[str, deque[_Attempt]] = {}  # insertion order is the turn order
        self._flying: Counter[str] = Counter()
        self._posting: dict[int, _Attempt] = {}  # thread ident -> the attempt it is posting

    def put(self, receiver: str, a: _Attempt) -> None:
        with self._ready:
            self._waiting.setdefault(receiver, deque()).append(a)
            self._ready.notify()

    def take(self) -> tuple[str, _Attempt]:
        with self._ready:
            while True:
                for receiver, waiting in self._waiting.items():
                    if self._flying[receiver] < PER_HOST:
                        a = waiting.popleft()
                        del self._waiting[receiver]
                        if waiting:  # its next attempt waits behind the other receivers'
                            self._waiting[receiver] = waiting
                        self._flying[receiver] += 1
                        self._posting[threading.get_ident()] = a
                        return receiver, a
                self._ready.wait()

    def done(self, receiver: str) -> None:
        with self._ready:
            self._posting.pop(threading.get_ident(), None)
            self._flying[receiver] -= 1
            if not self._flying[receiver]:
                del self._flying[receiver]  # a receiver seen once is not kept for the process's life
            self._ready.notify_all()

    def hold(self) -> list[_Attempt]:
        """Every attempt it holds, in flight and waiting; the waiting ones leave it."""
        with self._ready:
            held = [*self._posting.values(), *(a for waiting in self._waiting.values() for a in waiting)]
            self._waiting.clear()
            return held


_lock = threading.Lock()
_inbox: _Inbox | None = None
_pid: int | None = None  # the process the threads run in: a forked child starts its own


def dispatch(
    request_id: str, tries: int = 0, settings: Settings | None = None, broker: Celery | None = None
) -> None:
    """Queue one delivery attempt of the request's webhook (``tries`` attempts before it) and return. The
    process's settings and Celery app unless given (a test's)."""
    settings = settings or get_settings()
    _threads().put(_receiver(settings, request_id), _Attempt(request_id, tries, settings, broker or app))


def _receiver(settings: Settings, request_id: str) -> str:
    """The receiver's host and port, which the attempt waits under; "" where they cannot be read (the
    attempt itself then finds out why)."""
    try:
        with session_scope(settings.resolved_database_url) as s:
            url = s.scalar(select(DeletionRequest.callback_url).where(DeletionRequest.id == request_id))
        if not url:
            return ""
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        return f"{(parts.hostname or '').rstrip('.')}:{port}"  # h, h:443, user@h and h. are one receiver
    except Exception:  # noqa: BLE001 - the database, say: the attempt reports it
        log.warning("webhook for %s: could not read its receiver's host", request_id, exc_info=True)
        return ""


def _threads() -> _Inbox:
    global _inbox, _pid
    with _lock:
        if _inbox is None or _pid != os.getpid():
            _inbox, _pid = _Inbox(), os.getpid()
            for i in range(COURIERS):
                threading.Thread(target=_serve, args=(_inbox,), name=f"courier-{i}", daemon=True).start()
        return _inbox


def _serve(inbox: _Inbox) -> None:
    while True:
        receiver, a = inbox.take()
        try:
            try:
                done = webhooks.deliver(a.settings, a.request_id)
            except Exception:  # noqa: BLE001 - the database, say: tried again later, never lost
                log.warning("webhook for %s: the attempt failed; trying again", a.request_id, exc_info=True)
                done = False
            if not done and not send_deliver_webhook(a.broker, a.request_id, backoff(a.tries), a.tries + 1):
                log.warning("could not re-enqueue the webhook for %s; the reconciler will", a.request_id)
        finally:  # only once it is back with the broker: a stop's hand-back in between would miss it
            inbox.done(receiver)


def hand_back() -> int:
    """Send the attempts this process holds back to the broker, for the next worker (a stop, a deploy):
    the task that queued each was acknowledged when it handed it over, and otherwise only the reconciler
    would send it again, ten minutes on (a probe's deploy stop held four deliveries that long). Those in
    flight go too: one that still ends before the process does leaves its copy nothing to do (the
    request's webhook is no longer pending), and receivers drop a repeat by its webhook-id. Returns how
    many went back."""
    if _inbox is None or _pid != os.getpid():
        return 0
    return sum(send_deliver_webhook(a.broker, a.request_id, 0.0, a.tries) for a in _inbox.hold())


@worker_shutdown.connect  # the solo pool's process
@worker_process_shutdown.connect  # a prefork child's
def _hand_back_on_stop(**_: object) -> None:
    if hand_back():
        log.info("handed queued webhook deliveries back to the broker")


def backoff(tries: int) -> float:
    """Seconds before the next attempt after ``tries`` earlier ones: 1, 2, 4, ... up to five minutes."""
    return float(min(2**tries, MAX_BACKOFF_S))
