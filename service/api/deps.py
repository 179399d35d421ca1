"""FastAPI dependencies: the per-request session, settings, the task sender and the caller's key."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.core.db.engine import MAX_OVERFLOW, POOL_SIZE
from service.core.db.tables import ApiKey
from service.core.errors import Forbidden, Unauthorized
from service.core.keys import SCOPES, find_key, hash_key
from service.core.settings import Settings

log = logging.getLogger(__name__)


# Requests that hold a session at once, per API process: fewer than the pool's connections (the rest
# serve key lookups and the intake's group commits) and than anyio's 40 worker threads. A route's session
# keeps its connection until the request ends, after FastAPI has validated the response in a worker
# thread; with more sessions than connections, a burst filled every thread with routes waiting for a
# connection while the connections waited for a thread: 300 reads at once took three minutes and 238 of
# them were 503s at the pool's timeout (a probe). Beyond this, requests wait on the event loop. SQLite
# runs one transaction at a time (BEGIN IMMEDIATE): a few sessions keep it busy, and more only spun in
# its busy handler, which is not first come, first served (a burst's slowest waited out its 30 s).
SESSION_SLOTS = (POOL_SIZE + MAX_OVERFLOW) * 3 // 4
SQLITE_SESSION_SLOTS = 4


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request. Routes that write commit explicitly (before they enqueue anything);
    whatever is left uncommitted when the request ends is rolled back by close().

    An async dependency, so its teardown runs on the event loop rather than waiting for a free worker
    thread: under load, a teardown queued behind requests that wait for its connection deadlocked."""
    async with _session_slots(request.app.state):
        session = request.app.state.sessionmaker()
        try:
            yield session
        finally:
            close(session)


def _session_slots(state: Any) -> asyncio.Semaphore:
    """The process's ``SESSION_SLOTS``, made in the running event loop (an asyncio primitive belongs to
    one, and a test client runs the app in a loop of its own)."""
    loop = asyncio.get_running_loop()
    held: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = getattr(state, "session_slots", None)
    if held is None or held[0] is not loop:
        sqlite = state.sessionmaker.kw["bind"].dialect.name == "sqlite"
        held = (loop, asyncio.Semaphore(SQLITE_SESSION_SLOTS if sqlite else SESSION_SLOTS))
        state.session_slots = held
    return held[1]


def close(session: Session) -> None:
    """Close ``session``; a connection the database dropped under it is thrown away instead. A read
    leaves its transaction open, so close() rolls back over the wire, after the answer has started: a
    probe that killed the API's PostgreSQL backends under keep-alive GETs had 37 of ~3,300 connections
    reset with no answer at all (uvicorn's "response already started"). The answer already out is the
    request's; SQLAlchemy has invalidated the dead connection and returned its slot to the pool."""
    try:
        session.close()
    except DBAPIError:
        log.warning("a database connection died under a request; it is discarded", exc_info=True)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


# Closed when the route's function has returned (and its answer is serialized), before the body is sent:
# a download held its session, and its slot, for as long as the client took to read it (24 stalled
# downloads stopped every other request: a review), and on SQLite the write lock with it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
CeleryDep = Annotated[Celery, Depends(get_celery)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer ul_...`")


class KeyCache:
    """Keys verified in the last `ttl` seconds, per process, by their sha256: most requests then need no
    database round trip to authenticate. Only valid keys are cached; a revocation takes effect at once
    in the process that served it and within `ttl` seconds everywhere else (0 turns the cache off)."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._keys: dict[str, tuple[float, ApiKey]] = {}
        self._reading: dict[str, asyncio.Future[ApiKey | None]] = {}

    async def read_once(self, digest: str, read: Callable[[], Awaitable[ApiKey | None]]) -> ApiKey | None:
        """``read()`` the key, once however many requests ask for it at the same time: a burst carrying
        a key not yet cached read it once per request, each in a database transaction of its own (240 at
        once on SQLite fought for its write lock, and some waited out its 30 s busy timeout: 503s)."""
        loop = asyncio.get_running_loop()
        reading = self._reading.get(digest)
        if reading is not None and reading.get_loop() is loop:
            try:
                return await asyncio.shield(reading)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not reading.cancelled() or (task is not None and task.cancelling()):
                    raise  # this request was cancelled itself
                return await self.read_once(digest, read)  # the reader was: read it ourselves
        reading = self._reading[digest] = loop.create_future()
        reading.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, if none waited
        try:
            key = await read()
        except Exception as exc:
            reading.set_exception(exc)  # each waiter answers as the reader does (a 503 for an outage)
            raise
        except BaseException:
            reading.cancel()
            raise
        finally:
            if self._reading.get(digest) is reading:
                del self._reading[digest]
        reading.set_result(key)
        if key is not None:
            self.put(digest, key)
        return key

    def get(self, digest: str) -> ApiKey | None:
        hit = self._keys.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, digest: str, key: ApiKey) -> None:
        if self.ttl <= 0:
            return
        if len(self._keys) >= self.MAX_ENTRIES:
            self._keys.clear()
        self._keys[digest] = (time.monotonic() + self.ttl, key)

    def evict(self, digest: str) -> None:
        self._keys.pop(digest, None)


MISSING_KEY = "missing API key: send the header `Authorization: Bearer <key>`"
INVALID_KEY = "invalid or revoked API key"


def _lookup(sessions: sessionmaker[Session], plaintext: str) -> ApiKey | None:
    """The key, read in a session of its own that ends at once (no connection or SQLite lock is held
    afterwards), and detached fully loaded: it is cached and shared by later requests, so no request's
    session may expire it (a rollback would) and leave them an unloadable copy."""
    with sessions() as session:
        key = find_key(session, plaintext)
        session.commit()
        if key is not None:
            session.expunge(key)
        return key


async def authenticate(cache: KeyCache, sessions: sessionmaker[Session], plaintext: str) -> ApiKey | None:
    """The valid key whose plaintext this is, or None. A cache hit costs no trip to the thread pool;
    a miss reads the database in a worker thread (off the event loop) and fills the cache."""
    digest = hash_key(plaintext)
    key = cache.get(digest)
    if key is None:
        key = await cache.read_once(digest, lambda: run_in_threadpool(_lookup, sessions, plaintext))
    return key


def require_scope(*scopes: str):  # noqa: ANN201 - returns a FastAPI dependency
    """A dependency that admits keys holding any of `scopes` (or `admin`, which implies every scope).
    Async, so a key found in the cache costs no trip to the thread pool; only a miss reads the database
    (in a worker thread). Under /v1 the admission middleware (service.api.gate) has already checked the
    key before the body was read, so this is a cache hit there."""

    async def dependency(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> ApiKey:
        if creds is None or not creds.credentials:
            raise Unauthorized(MISSING_KEY)
        key = await authenticate(
            request.app.state.key_cache, request.app.state.sessionmaker, creds.credentials
        )
        if key is None:
            raise Unauthorized(INVALID_KEY)
        if "admin" not in key.scopes and not set(scopes) & set(key.scopes):
            wanted = " or ".join(repr(s) for s in scopes)
            raise Forbidden(f"this API key lacks the scope {wanted}", required_scopes=list(scopes))
        return key

    return dependency


DeletionWriter = Annotated[ApiKey, Depends(require_scope("deletion:write"))]
JobsReader = Annotated[ApiKey, Depends(require_scope("jobs:read"))]
AuditReader = Annotated[ApiKey, Depends(require_scope("audit:read"))]
AnyKey = Annotated[ApiKey, Depends(require_scope(*SCOPES))]
RequestReader = Annotated[ApiKey, Depends(require_scope("deletion:write", "jobs:read", "audit:read"))]
Admin = Annotated[ApiKey, Depends(require_scope("admin"))]
