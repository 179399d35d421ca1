"""The client verbs that list what a running server holds (models, jobs, versions, requests) and
`keys ... --api`, plus `client_verb`, which opens the HTTP client every client verb runs with.

They talk to the public API only (`service.cli.client`), never to the database, and import the client and
rich when they run, not when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.cli.render import console, jobs_table, models_table, requests_table, say, versions_table

if TYPE_CHECKING:
    from service.cli.client import Client


def client_verb(fn: Callable[[Client, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run `fn` with a client for the command line's --url, --api-key and --http-timeout."""

    def run(args: argparse.Namespace) -> int:
        from service.cli.client import Client

        with Client(args.url, args.api_key, timeout=args.http_timeout) as client:
            return fn(client, args)

    return run


def cmd_keys_api(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        key = client.create_key(args.scopes, args.name, args.tenant)
        say(f"{key['key']}\nid={key['id']} tenant={key['tenant']} scopes={','.join(key['scopes'])}")
    else:
        client.revoke_key(args.id)
        say(f"revoked {args.id}")
    return 0


def cmd_models(client: Client, _args: argparse.Namespace) -> int:
    console().print(models_table(client.models()))
    return 0


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    def fetch() -> list[dict[str, Any]]:
        return client.jobs(model=args.model, state=args.state, limit=args.limit)

    out = console()
    if not args.watch:
        jobs = fetch()
        out.print(jobs_table(jobs) if jobs else "no jobs yet")
        return 0
    try:
        if out.is_terminal:
            from rich.live import Live

            with Live(jobs_table(fetch()), console=out, refresh_per_second=4) as live:
                while True:
                    time.sleep(args.interval)
                    live.update(jobs_table(fetch()))
        last = None
        while True:  # not a terminal (a pipe, a log): print the table each time it changes
            jobs = fetch()
            snapshot = json.dumps([(j["id"], j["state"], j["phase"], round(j["progress"], 2)) for j in jobs])
            if snapshot != last:
                out.print(jobs_table(jobs))
                sys.stdout.flush()
                last = snapshot
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_versions(client: Client, args: argparse.Namespace) -> int:
    console().print(versions_table(args.model, client.versions(args.model), full=args.full))
    return 0


def cmd_requests(client: Client, args: argparse.Namespace) -> int:
    if args.id:
        items = [client.request(args.id)]
    else:
        items = client.requests(
            model=args.model, state=args.state, reference=args.reference, limit=args.limit
        )
    console().print(requests_table(items) if items else "no deletion requests match")
    return 0
