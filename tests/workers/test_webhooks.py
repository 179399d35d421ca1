"""Webhook delivery (`workers.webhooks.deliver`, what the deliver_webhook task runs) to a live receiver on
127.0.0.1: deliveries verify with the `standardwebhooks` library receivers use, under every active secret
of the tenant during a rotation's grace period and only under the new one after; a message keeps its
webhook-id across retries; destinations that resolve to private addresses are refused, not retried.
Runs on the embedded default and on PostgreSQL."""

from __future__ import annotations

import ipaddress
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.api.app import create_app
from service.core import deletions, jobs, webhook_secrets
from service.core.db.engine import session_scope
from service.core.db.tables import AuditEvent, DeletionRequest, WebhookSecret, utcnow
from service.core.keys import create_key
from service.core.queue import DELIVER_WEBHOOK, make_celery
from service.core.settings import Settings
from service.core.states import JobState, RequestState, WebhookState
from tests.conftest import Backend
from tests.factories import make_key, make_model
from tests.helpers import migrated, wait_until
from workers import claims, courier, webhooks

TRICKLE_S, ANSWER_BYTES = 0.2, 10_000  # a held answer: a byte per 0.2 s, far quicker than any read timeout


@dataclass
class Receiver:
    """An HTTP receiver in a thread: records each POST and answers the next of `statuses` (then 204)."""

    port: int = 0
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    # set: answer 200 a byte at a time, one every TRICKLE_S, until the event is set, then the rest
    hold: threading.Event | None = None
    hold_host: str | None = None  # set: hold only posts addressed to this host name

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            rec.received.append((body, dict(self.headers.items())))
            held_here = rec.hold_host in (None, self.headers["Host"].rsplit(":", 1)[0])
            if rec.hold is not None and held_here:
                self.send_response(200)
                self.send_header("Content-Length", str(ANSWER_BYTES))
                self.end_headers()
                sent = 0
                while sent < ANSWER_BYTES - 1 and not rec.hold.wait(TRICKLE_S):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    sent += 1
                self.wfile.write(b"x" * (ANSWER_BYTES - sent))
                return
            self.send_response(rec.statuses.pop(0) if rec.statuses else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()


@dataclass
class World:
    """A migrated database, the settings that point at it (`env`) and the receiver they allow."""

    settings: Settings
    env: dict[str, str]
    receiver: Receiver

    @property
    def url(self) -> str:
        return self.settings.resolved_database_url

    def with_settings(self, **env: str) -> Settings:
        return Settings(**{**self.env, **env})  # type: ignore[arg-type]

    def finished(
        self, tenant: str = "default", state: JobState = JobState.COMPLETED, host: str = "127.0.0.1"
    ) -> str:
        """A request of `tenant` with a callback to the receiver, closed by its job in `state`."""
        with session_scope(self.url) as s:
            model = make_model(s, tenant=tenant, name=f"m{uuid.uuid4().hex[:8]}")
            key, _ = create_key(s, tenant=tenant, scopes=["deletion:write"])
            req = deletions.submit(
                s,
                model=model,
                key=key,
                sample_ids=[f"{model.name}-0001"],
                reference="ticket-9",
                max_ids=10,
                callback_url=self.receiver.url(host),
                allowed_hosts=self.settings.webhook_allowed_hosts,
                allow_http=True,
            )
            job = claims.claim_pending(s, model)
            assert job is not None
            jobs.close(s, job, state, result_version=2 if state == JobState.COMPLETED else None)
            return req.id

    def rotate(self, tenant: str = "default", grace: int = 3600) -> str:
        with session_scope(self.url) as s:
            return webhook_secrets.rotate(s, tenant, grace, actor="test").secret

    def request(self, request_id: str) -> DeletionRequest:
        with session_scope(self.url) as s:
            return s.get_one(DeletionRequest, request_id)


@pytest.fixture
def world(backend: Backend, receiver: Receiver) -> World:
    env = {
        **backend.env,
        "UNLEARN_WEBHOOK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port},localhost:{receiver.port}",
        "UNLEARN_WEBHOOK_ALLOW_HTTP": "true",
        "UNLEARN_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "UNLEARN_WEBHOOK_MAX_ATTEMPTS": "3",
    }
    settings = Settings(**env)  # type: ignore[arg-type]
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    migrated(settings.resolved_database_url)
    return World(settings, env, receiver)


def test_a_delivery_verifies_with_the_standardwebhooks_library(world: World) -> None:
    secret = world.rotate()
    rid = world.finished()
    assert webhooks.deliver(world.settings, rid) is True
    [(body, headers)] = world.receiver.received
    event = Webhook(secret).verify(body, headers)
    assert event["event"] == "deletion_request.completed"
    assert (event["request"]["id"], event["request"]["model_version"]) == (rid, "v2")
    assert headers["webhook-id"] == f"{rid}:completed:{event['request']['job_id']}"
    assert webhooks.verify(secret, body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhook_secrets.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the body is what was signed
        Webhook(secret).verify(body.replace(b"v2", b"v3"), headers)
    assert world.request(rid).webhook_state == WebhookState.DELIVERED


@pytest.mark.parametrize("configured", ["whsec_" + "c2VydmljZS13aWRlIGtleQ==", "s3cret"])
def test_a_tenant_that_never_rotated_is_signed_with_the_service_wide_secret(
    world: World, configured: str
) -> None:
    settings = world.with_settings(UNLEARN_WEBHOOK_SECRET=configured)
    rid = world.finished()
    assert webhooks.deliver(settings, rid)
    [(body, headers)] = world.receiver.received
    receiver_key = configured if configured.startswith("whsec_") else configured.encode()
    assert Webhook(receiver_key).verify(body, headers)["request"]["id"] == rid
    assert len(headers["webhook-signature"].split()) == 1


def test_during_a_rotation_old_and_new_secret_holders_both_verify_and_after_it_only_the_new(
    world: World,
) -> None:
    settings = world.with_settings(UNLEARN_WEBHOOK_SECRET="s3cret")
    old = world.rotate()
    new = world.rotate(grace=3600)
    rid = world.finished()
    assert webhooks.deliver(settings, rid)
    [(body, headers)] = world.receiver.received
    assert len(headers["webhook-signature"].split()) == 3
    assert Webhook(old).verify(body, headers)["request"]["id"] == rid
    assert Webhook(new).verify(body, headers)["request"]["id"] == rid
    # The first rotation gave the service-wide key, which signed until then, the grace period too.
    assert Webhook(b"s3cret").verify(body, headers)["request"]["id"] == rid

    with session_scope(world.url) as s:  # the grace period passes
        for row in s.scalars(select(WebhookSecret).where(WebhookSecret.expires_at.is_not(None))):
            row.expires_at = utcnow() - timedelta(seconds=1)
    later = world.finished()
    assert webhooks.deliver(settings, later)
    body, headers = world.receiver.received[1]
    assert Webhook(new).verify(body, headers)["request"]["id"] == later
    for retired in (old, b"s3cret"):
        with pytest.raises(WebhookVerificationError):
            Webhook(retired).verify(body, headers)


def test_another_tenants_secret_does_not_verify(world: World) -> None:
    world.rotate("default")
    theirs = world.rotate("other")
    rid = world.finished(tenant="default")
    assert webhooks.deliver(world.settings, rid)
    [(body, headers)] = world.receiver.received
    with pytest.raises(WebhookVerificationError):
        Webhook(theirs).verify(body, headers)


def test_a_retried_message_keeps_its_webhook_id_and_is_signed_afresh(world: World) -> None:
    secret = world.rotate()
    rid = world.finished(state=JobState.FAILED)
    world.receiver.statuses = [500]
    assert webhooks.deliver(world.settings, rid) is False  # retry later
    assert world.request(rid).webhook_state == WebhookState.PENDING
    assert webhooks.deliver(world.settings, rid) is True
    (first_body, first), (second_body, second) = world.receiver.received
    assert first["webhook-id"] == second["webhook-id"]
    assert first_body == second_body
    assert Webhook(secret).verify(second_body, second)["event"] == "deletion_request.failed"
    req = world.request(rid)
    assert (req.webhook_state, req.webhook_attempts) == (WebhookState.DELIVERED, 2)


def test_a_webhook_is_given_up_after_its_attempts_with_the_reason_in_the_trail(world: World) -> None:
    rid = world.finished()
    world.receiver.statuses = [500, 502, 503]
    assert [webhooks.deliver(world.settings, rid) for _ in range(3)] == [False, False, True]
    assert world.request(rid).webhook_state == WebhookState.FAILED
    assert len(world.receiver.received) == 3
    with session_scope(world.url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.webhook_failed"))
        assert event.entity_id == rid and event.data["attempts"] == 3
        assert "HTTP 503" in event.data["reason"]


def test_a_callback_url_no_client_can_send_fails_at_once_instead_of_staying_pending(world: World) -> None:
    """A URL over httpx's 64 KB (stored before the API's limit) raised httpx.InvalidURL, not an HTTPError:
    the courier sent the attempt again without counting it, and the webhook stayed pending for good."""
    rid = world.finished()
    with session_scope(world.url) as s:
        req = s.get_one(DeletionRequest, rid)
        req.callback_url = req.callback_url + "a" * 70_000
    assert webhooks.deliver(world.settings, rid) is True  # done with: no attempt would send it
    req = world.request(rid)
    assert (req.webhook_state, req.webhook_attempts) == (WebhookState.FAILED, 1)
    assert world.receiver.received == []
    with session_scope(world.url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.webhook_failed"))
        assert "URL too long" in event.data["reason"], event.data


@pytest.mark.parametrize(("host", "kind"), [("localhost", "loopback"), ("127.0.0.1", "loopback")])
def test_a_callback_resolving_to_a_private_address_is_refused_at_delivery_and_not_retried(
    world: World, host: str, kind: str
) -> None:
    settings = world.with_settings(UNLEARN_WEBHOOK_ALLOW_PRIVATE="false")
    rid = world.finished(host=host)
    assert webhooks.deliver(settings, rid) is True  # done with: retrying would not change the answer
    assert world.receiver.received == []
    assert world.request(rid).webhook_state == WebhookState.FAILED
    with session_scope(world.url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.webhook_failed"))
        assert (
            f"a {kind} address" in event.data["reason"]
            and "UNLEARN_WEBHOOK_ALLOW_PRIVATE" in event.data["reason"]
        )


def test_a_callback_the_allow_list_no_longer_names_is_refused_at_delivery(world: World) -> None:
    rid = world.finished()
    settings = world.with_settings(UNLEARN_WEBHOOK_ALLOW_HTTP="false")
    assert webhooks.deliver(settings, rid) is True
    assert world.receiver.received == []
    assert world.request(rid).webhook_state == WebhookState.FAILED


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.0.1", "private"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not globally routable"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classification(address: str, problem: str | None) -> None:
    assert webhooks.address_problem(ipaddress.ip_address(address)) == problem


def test_nothing_is_sent_for_a_request_without_a_pending_webhook(world: World) -> None:
    rid = world.finished()
    with session_scope(world.url) as s:
        s.get_one(DeletionRequest, rid).webhook_state = WebhookState.DELIVERED
    assert webhooks.deliver(world.settings, rid) is True
    assert world.receiver.received == []
    assert world.request(rid).state == RequestState.COMPLETED


# -- cancelled requests ----------------------------------------------------------------------------------


def enqueued_webhooks(settings: Settings) -> list[str]:
    """Request ids of the deliver_webhook tasks now on the queue (what a worker would be handed); other
    tasks (a model's wake-up) are consumed and dropped."""
    return [rid for task in queued_deliveries(settings) for rid in task["args"]]


def test_a_request_cancelled_by_its_client_is_announced_with_a_verified_webhook(world: World) -> None:
    secret = world.rotate()
    with session_scope(world.url) as s:
        make_model(s, name="toy")
        key = make_key(s, scopes=("deletion:write",))
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(world.settings)) as client:
        body = {"sample_ids": ["toy-0001"], "callback_url": world.receiver.url()}
        r = client.post("/v1/models/toy/deletion-requests", json=body, headers=auth)
        assert r.status_code == 202, r.text
        rid = r.json()["id"]
        r = client.post(f"/v1/deletion-requests/{rid}/cancel", headers=auth)
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["webhook_state"]) == ("cancelled", "pending")
    # The API sent the delivery task after its commit; a worker runs it (here: what the task calls).
    sent: list[str] = []

    def delivery_task_sent() -> bool:
        sent.extend(enqueued_webhooks(world.settings))
        return rid in sent

    wait_until(delivery_task_sent, timeout=20, what="the deliver_webhook task")
    assert webhooks.deliver(world.settings, rid) is True
    [(payload, headers)] = world.receiver.received
    event = Webhook(secret).verify(payload, headers)
    assert event["event"] == "deletion_request.cancelled"
    assert (event["request"]["id"], event["request"]["state"], event["request"]["job_id"]) == (
        rid,
        "cancelled",
        None,
    )
    assert world.request(rid).webhook_state == WebhookState.DELIVERED


def test_a_request_whose_job_an_admin_cancelled_is_announced_with_a_verified_webhook(world: World) -> None:
    secret = world.rotate()
    rid = world.finished(state=JobState.CANCELLED)
    assert webhooks.deliver(world.settings, rid) is True
    [(payload, headers)] = world.receiver.received
    event = Webhook(secret).verify(payload, headers)
    assert (event["event"], event["request"]["id"]) == ("deletion_request.cancelled", rid)


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_attempts_deadline(world: World) -> None:
    """httpx's timeout bounds each read: a probe's receiver sending a byte every 5 s held a delivery (and
    the worker) for a minute. The whole exchange now has UNLEARN_WEBHOOK_TIMEOUT_SECONDS; this receiver
    would trickle for half an hour."""
    settings = world.with_settings(UNLEARN_WEBHOOK_TIMEOUT_SECONDS="1", UNLEARN_WEBHOOK_MAX_ATTEMPTS="1")
    world.receiver.hold = threading.Event()
    rid = world.finished()
    try:
        assert webhooks.deliver(settings, rid) is True  # given up: its one attempt ran out of time
    finally:
        world.receiver.hold.set()
    assert world.request(rid).webhook_state == WebhookState.FAILED
    with session_scope(world.url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.webhook_failed"))
        assert "did not answer in full within 1 s" in event.data["reason"]


def test_the_delivery_task_hands_its_attempt_to_a_courier_and_returns_while_the_receiver_holds(
    world: World,
) -> None:
    """A worker runs one task at a time, and a delivery was one: a receiver slow to answer held every
    tenant's jobs behind it. The task now returns at once and a courier thread delivers."""
    world.receiver.hold = threading.Event()
    rid = world.finished()
    try:
        courier.dispatch(rid, settings=world.settings, broker=make_celery(world.settings))
        wait_until(lambda: world.receiver.received, timeout=20, what="the courier's post")
        assert world.request(rid).webhook_state == WebhookState.PENDING  # still being answered
    finally:
        world.receiver.hold.set()
    wait_until(
        lambda: world.request(rid).webhook_state == WebhookState.DELIVERED, timeout=20, what="the delivery"
    )


def test_a_courier_attempt_that_fails_goes_back_to_the_broker_with_its_backoff(world: World) -> None:
    world.receiver.statuses = [500]
    rid = world.finished()
    enqueued_webhooks(world.settings)  # the queue holds only what the attempt sends back
    courier.dispatch(rid, tries=2, settings=world.settings, broker=make_celery(world.settings))
    wait_until(lambda: world.request(rid).webhook_attempts == 1, timeout=20, what="the attempt")
    sent: list[dict] = []
    wait_until(lambda: sent.extend(queued_deliveries(world.settings)) or sent, timeout=20, what="the retry")
    [retry] = sent
    assert retry["args"] == [rid] and retry["kwargs"] == {"tries": 3}
    assert retry["eta"] is not None  # not before its backoff: 2**2 s
    assert courier.backoff(2) == 4.0 and courier.backoff(20) == courier.MAX_BACKOFF_S


def test_a_webhook_the_broker_will_not_take_at_a_jobs_end_is_delivered_by_the_worker(world: World) -> None:
    """Left to the reconciler, a 20 s broker outage at a job's end delayed its webhook ten minutes (a
    probe). Nothing listens on port 9: the broker is down."""
    from workers.tasks import send_webhooks

    rid = world.finished()
    down = make_celery(world.settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"}))
    send_webhooks([rid], broker=down, settings=world.settings)
    wait_until(
        lambda: world.request(rid).webhook_state == WebhookState.DELIVERED, timeout=20, what="the delivery"
    )
    assert len(world.receiver.received) == 1


def queued_deliveries(settings: Settings) -> list[dict]:
    """The deliver_webhook tasks on the queue, with their args, kwargs and eta; every message is consumed."""
    found: list[dict] = []
    with make_celery(settings).connection_for_read() as conn:
        queue = conn.SimpleQueue(settings.queue_name)
        try:
            while True:
                message = queue.get(timeout=0.5)
                message.ack()
                if message.headers.get("task") == DELIVER_WEBHOOK:
                    args, kwargs, _ = message.payload
                    found.append({"args": args, "kwargs": kwargs, "eta": message.headers.get("eta")})
        except queue.Empty:
            return found
        finally:
            queue.close()


def test_a_slow_receivers_backlog_does_not_hold_another_receivers_webhook(world: World) -> None:
    """One first-come queue let a backlog to one slow receiver take every courier: another tenant's
    webhook, queued behind it, waited for the backlog's timeouts. Couriers now take turns per host."""
    world.receiver.hold, world.receiver.hold_host = threading.Event(), "localhost"
    settings = world.with_settings(UNLEARN_WEBHOOK_TIMEOUT_SECONDS="120")  # held past the deadline below
    broker = make_celery(settings)
    slow = [world.finished(tenant="slow", host="localhost") for _ in range(courier.COURIERS + 2)]
    quick = world.finished(tenant="quick")
    try:
        for rid in [*slow, quick]:
            courier.dispatch(rid, settings=settings, broker=broker)
        wait_until(
            lambda: world.request(quick).webhook_state == WebhookState.DELIVERED,
            timeout=20,
            what="the quick receiver's webhook while the slow one holds",
        )
        slow_posts = [h for _, h in world.receiver.received if h["Host"].startswith("localhost")]
        assert len(slow_posts) <= courier.PER_HOST  # the slow host never had more couriers than its share
        assert all(world.request(r).webhook_state == WebhookState.PENDING for r in slow)
    finally:
        world.receiver.hold.set()
    wait_until(
        lambda: all(world.request(r).webhook_state == WebhookState.DELIVERED for r in slow),
        timeout=60,
        what="the slow receiver's backlog",
    )


def test_a_stopping_worker_hands_the_attempts_it_holds_back_to_the_broker(world: World) -> None:
    """The delivery task is acknowledged when it hands its attempt over: attempts queued or in flight at
    a stop would otherwise wait for the reconciler's ten-minute sweep (a probe's deploy held four)."""
    world.receiver.hold = threading.Event()
    hosts = ["127.0.0.1", "localhost"] * (courier.COURIERS // 2 + 1)  # PER_HOST couriers on each host
    rids = [world.finished(host=host) for host in hosts]
    enqueued_webhooks(world.settings)  # the queue holds only what is handed back
    broker = make_celery(world.settings)
    try:
        for rid in rids:
            courier.dispatch(rid, tries=1, settings=world.settings, broker=broker)
        busy = courier.COURIERS
        wait_until(lambda: len(world.receiver.received) == busy, timeout=20, what="every courier busy")
        assert courier.hand_back() == len(rids)  # the four in flight and the two never started
    finally:
        world.receiver.hold.set()
    handed = queued_deliveries(world.settings)
    assert sorted(t["args"][0] for t in handed) == sorted(rids)
    assert all(t["kwargs"] == {"tries": 1} for t in handed)
    wait_until(
        lambda: all(world.request(r).webhook_state == WebhookState.DELIVERED for r in rids[:busy]),
        timeout=30,
        what="the deliveries in flight",
    )


def test_a_name_that_takes_long_to_resolve_counts_against_the_attempts_deadline(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Name lookups ran outside the bound (asyncio.run joined the resolver thread, and the SSRF check
    resolved synchronously): a hanging DNS server held a courier for as long as it liked."""
    real, released = socket.getaddrinfo, threading.Event()

    def hanging(host: object, *args: object, **kwargs: object) -> object:
        if host in ("localhost", b"localhost"):  # anyio passes the name encoded
            released.wait(60)  # a DNS server that answers only once the test is over
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    settings = world.with_settings(UNLEARN_WEBHOOK_TIMEOUT_SECONDS="0.5", UNLEARN_WEBHOOK_MAX_ATTEMPTS="1")
    rid = world.finished(host="localhost")
    try:
        assert webhooks.deliver(settings, rid) is True  # given up while the lookup still hangs
    finally:
        released.set()
    assert world.request(rid).webhook_state == WebhookState.FAILED
    assert world.receiver.received == []
    with session_scope(world.url) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "deletion_request.webhook_failed"))
        assert "did not answer in full within 0.5 s" in event.data["reason"]
