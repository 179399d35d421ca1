"""What a client hears when the API's shutdown cancels its request before the response began."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from service.api.app import StoppedMidRequest


async def _cancelled_while(app: Any) -> tuple[list[dict[str, Any]], bool]:
    """Run ``app`` behind StoppedMidRequest, cancel it once it waits; what it sent, and whether the
    cancellation went on up (an answered request's task ends quietly: no traceback in the server's log)."""
    sent: list[dict[str, Any]] = []
    body_arrives = asyncio.Event()  # never set: a client that stopped sending

    async def receive() -> dict[str, Any]:
        await body_arrives.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    task = asyncio.ensure_future(StoppedMidRequest(app)(scope, receive, send))
    for _ in range(10):  # let it reach its wait
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return sent, True
    return sent, False


def _answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(body)


def test_a_request_cancelled_while_its_body_arrives_was_not_acted_on() -> None:
    async def reads_its_body(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    sent, raised = asyncio.run(_cancelled_while(reads_its_body))
    status, headers, problem = _answer(sent)
    assert (status, headers["retry-after"], headers["connection"]) == (503, "2", "close") and not raised
    assert "nothing of it was done" in problem["detail"]


def test_a_request_cancelled_in_its_route_may_have_taken_effect() -> None:
    """A route without a body (a cancel, a revoke, a DELETE) never waits for one: its thread goes on after
    the cancel, and "nothing of it was done" would be wrong (a review)."""

    async def works(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.Event().wait()  # a route under way, its body read or never needed

    status, _, problem = _answer(asyncio.run(_cancelled_while(works))[0])
    assert status == 503 and "may have taken effect" in problem["detail"], problem
    assert "Idempotency-Key" in problem["detail"]


def test_a_request_whose_response_began_is_left_to_the_server() -> None:
    async def answering(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.Event().wait()

    sent, raised = asyncio.run(_cancelled_while(answering))
    assert [m["type"] for m in sent] == ["http.response.start"] and raised  # nothing added to it
