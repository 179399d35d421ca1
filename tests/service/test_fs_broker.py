"""The embedded broker (service/core/fs_broker.py): a consumer never reads a message that is still being
written. kombu's own filesystem transport let a worker read an empty file and die of the JSON error."""

from __future__ import annotations

import os
from pathlib import Path

from kombu import Connection, Exchange, Queue

from service.core.fs_broker import TRANSPORT
from service.core.queue import make_celery
from service.core.settings import Settings


def _connection(folder: Path) -> Connection:
    return Connection(
        "filesystem://",
        transport=TRANSPORT,
        transport_options={"data_folder_in": str(folder), "data_folder_out": str(folder),
                           "processed_folder": str(folder / "done"), "store_processed": False},
    )  # fmt: skip


def test_a_message_being_written_is_invisible_and_a_written_one_arrives_whole(tmp_path: Path) -> None:
    (tmp_path / "done").mkdir()
    queue = Queue("jobs", Exchange("jobs"), "jobs")
    with _connection(tmp_path) as conn:
        channel = conn.channel()
        queue(channel).declare()
        # what a writer leaves mid-write: the reader must pass it over, not parse it
        (tmp_path / ".1_x.jobs.msg.part").write_bytes(b"")
        assert queue(channel).get() is None
        conn.Producer().publish({"model": "digits"}, exchange=queue.exchange, routing_key="jobs")
        assert [n for n in os.listdir(tmp_path) if n.endswith(".part")] == [".1_x.jobs.msg.part"]
        message = queue(channel).get()
        assert message is not None and message.payload == {"model": "digits"}


def test_the_embedded_stack_uses_it_and_a_configured_broker_does_not(tmp_path: Path) -> None:
    embedded = make_celery(Settings(var_dir=tmp_path))
    assert embedded.conf.broker_transport == TRANSPORT
    with embedded.connection_for_write() as conn:
        assert type(conn.transport).__module__ == "service.core.fs_broker"
    redis = make_celery(Settings(var_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0"))
    assert redis.conf.broker_transport is None


def test_every_message_sent_is_received_once(tmp_path: Path) -> None:
    n = 50
    (tmp_path / "done").mkdir()
    queue = Queue("jobs", Exchange("jobs"), "jobs")
    with _connection(tmp_path) as conn:
        channel = conn.channel()
        queue(channel).declare()
        producer = conn.Producer()
        for i in range(n):
            producer.publish({"i": i}, exchange=queue.exchange, routing_key="jobs")
        got = []
        while (message := queue(channel).get()) is not None:
            got.append(message.payload["i"])
            message.ack()
    assert sorted(got) == list(range(n)) and not list(tmp_path.glob("*.msg"))
