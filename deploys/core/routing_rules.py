"""The routing rules: which of Synapse's endpoint lists go to which routing class, in nginx order.

Pure data over ``deploys.core.endpoints`` and ``deploys.core.worker_types``;
``deploys.core.routing`` turns the rules and a worker plan into nginx's upstreams and locations.

Order of the rules (each rule is a list from ``deploys/core/endpoints.py``):

1. main-only paths and single sign-on: main;
2. each stream's endpoints: its writer, or main when the stream has none (the write handlers
   fail with 500 anywhere else); the streams' GET-only rules send GET and HEAD to any generic
   worker (client readers when there are no generic workers);
3. media (before any federation rule, matrix-docker-ansible-deploy issue #3918), user directory;
4. sync, room pagination, room-scoped client and federation requests, client reads;
5. federation reads and inbound transactions last.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploys.core import endpoints as ep
from deploys.core.worker_types import STREAMS, Routing


@dataclass(frozen=True)
class Target:
    """A pool of workers: a routing class (and stream), optionally balanced by room instead."""

    routing: Routing
    stream: str | None = None
    by_room: bool = False


@dataclass(frozen=True)
class Rule:
    """Endpoints and where they go: the first target with workers, else main.

    ``get_targets`` (GET-only rules): GET and HEAD go to the first of these with workers; other
    methods, or every method when none has workers, go as ``targets`` say.
    """

    name: str
    regexes: tuple[str, ...]
    targets: tuple[Target, ...] = ()
    get_targets: tuple[Target, ...] = ()


def rules() -> tuple[Rule, ...]:
    """Every rule, in nginx location order."""
    generic, client_reader = Target(Routing.GENERIC), Target(Routing.CLIENT_READER)
    readers = (generic, client_reader)
    room, federation_reader = Target(Routing.ROOM), Target(Routing.FEDERATION_READER)
    out = [
        Rule("main only", ep.MAIN_ONLY),
        Rule("single sign-on: one process, main", ep.SSO),
    ]
    for stream in STREAMS:
        endpoints = ep.STREAM_ENDPOINTS[stream.name]
        writer = (Target(Routing.STREAM, stream.name),)
        out.append(Rule(f"{stream.name} stream: its writer, else main", endpoints.writer, writer))
        out.append(
            Rule(
                f"{stream.name} stream: GET on any worker, writes to its writer",
                endpoints.get_anywhere,
                writer,
                readers,
            )
        )
    out += [
        Rule("GET on any worker, writes on main", ep.GET_ANYWHERE, get_targets=readers),
        Rule("media repository (before any federation rule)", ep.MEDIA, (Target(Routing.MEDIA),)),
        Rule("user directory", ep.USER_DIRECTORY, (Target(Routing.USER_DIRECTORY), *readers)),
        Rule("sync, by user", ep.SYNC, (Target(Routing.SYNC), generic)),
        Rule(
            "room pagination, by room",
            ep.ROOM_MESSAGES,
            (
                room,
                Target(Routing.GENERIC, by_room=True),
                Target(Routing.CLIENT_READER, by_room=True),
            ),
        ),
        Rule("room-scoped client requests", ep.ROOM_CLIENT, (room, *readers)),
        Rule(
            "room-scoped federation requests",
            ep.ROOM_FEDERATION,
            (room, federation_reader, generic),
        ),
        Rule("client requests", ep.CLIENT_READER, (client_reader, generic)),
        Rule(
            "federation requests (last: media and room routes win)",
            ep.FEDERATION,
            (federation_reader, generic),
        ),
        Rule(
            "inbound federation transactions, by origin",
            ep.FEDERATION_INBOUND,
            (federation_reader, generic),
        ),
    ]
    return tuple(r for r in out if r.regexes)
