"""The one table of Synapse worker types and stream-writer streams.

Every worker runs ``synapse.app.generic_worker``; its "type" is a role: which listener resources it
serves, which shared-config key names it, how many may exist and how the reverse proxy routes to it.
Adding a worker type means adding one row to ``WORKER_TYPES`` (and a stream, one row to
``STREAMS``).
Names and counts follow matrix-docker-ansible-deploy so an operator's variables carry over.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

GENERIC_WORKER_APP: Final = "synapse.app.generic_worker"

# Apps that synapse/app/generic_worker.py accepts (its assert tuple). We always emit the first one
# but accept the others in a hand-written worker list, as matrix-docker-ansible-deploy does.
ACCEPTED_WORKER_APPS: Final = frozenset(
    {
        GENERIC_WORKER_APP,
        "synapse.app.media_repository",
    }
)


class SharedRole(enum.Enum):
    """Which shared-config key assigns a duty to workers of a type."""

    NONE = "none"
    STREAM_WRITER = "stream_writers"
    FEDERATION_SENDER = "federation_sender_instances"
    PUSHER = "pusher_instances"
    APPSERVICE = "notify_appservices_from_worker"
    USER_DIRECTORY = "update_user_directory_from_worker"
    BACKGROUND = "run_background_tasks_on"
    MEDIA = "media_instance_running_background_jobs"


class Routing(enum.Enum):
    """How the reverse proxy picks a worker of this type (see deploys/core/routing.py)."""

    NONE = "none"  # serves no HTTP; reached only over replication / Redis
    GENERIC = "generic"  # any generic-worker endpoint, sticky by requester (user or origin)
    ROOM = "room"  # room-scoped endpoints, sticky by room id
    SYNC = "sync"  # /sync and friends, sticky by user
    CLIENT_READER = "client_reader"  # client reads, least connections
    FEDERATION_READER = "federation_reader"  # federation reads, by source
    USER_DIRECTORY = "user_directory"  # user directory search
    MEDIA = "media"  # media repository
    STREAM = "stream"  # a stream writer's own endpoints


@dataclass(frozen=True)
class WorkerType:
    """One row of the worker-type table.

    Attributes:
        key: matrix-docker-ansible-deploy's count-variable infix
            (``matrix_synapse_workers_<key>_workers_count``).
        mdad_type: the ``type`` value of a matrix-docker-ansible-deploy worker-list entry.
        name_prefix: worker names are ``<name_prefix>-<index>``.
        http_resources: listener resources of the worker's HTTP listener; empty means none.
        shared_role: the shared-config key that gives this type its duty.
        single: at most one worker of this type may exist (Synapse takes one name for the duty).
        routing: how the reverse proxy routes to workers of this type.
        media: the worker loads the media repository (``enable_media_repo: true``).
    """

    key: str
    mdad_type: str
    name_prefix: str
    http_resources: tuple[str, ...]
    shared_role: SharedRole
    single: bool
    routing: Routing
    media: bool = False
    app: str = GENERIC_WORKER_APP

    @property
    def count_key(self) -> str:
        return f"matrix_synapse_workers_{self.key}_workers_count"

    @property
    def http_port_key(self) -> str | None:
        if not self.http_resources:
            return None
        return f"matrix_synapse_workers_{self.key}_workers_port_range_start"

    @property
    def metrics_port_key(self) -> str:
        return f"matrix_synapse_workers_{self.key}_workers_metrics_range_start"


@dataclass(frozen=True)
class Stream:
    """One stream that can be moved off the main process to stream-writer workers.

    Attributes:
        name: the key under Synapse's ``stream_writers`` (``WriterLocations`` in
            synapse/config/workers.py).
        single: Synapse accepts exactly one writer for this stream.
        webserving: its writer serves client endpoints (``events`` writers only persist).
        media: its writer must load the media repository (quarantine admin endpoints).
    """

    name: str
    single: bool
    webserving: bool = True
    media: bool = False

    @property
    def count_key(self) -> str:
        return f"matrix_synapse_workers_stream_writer_{self.name}_stream_workers_count"


# Port-range starts are settings (group_data/all.py), named after each row's key.
WORKER_TYPES: Final[tuple[WorkerType, ...]] = (
    WorkerType(
        key="room",
        mdad_type="room_worker",
        name_prefix="room",
        http_resources=("client", "federation"),
        shared_role=SharedRole.NONE,
        single=False,
        routing=Routing.ROOM,
    ),
    WorkerType(
        key="sync",
        mdad_type="sync_worker",
        name_prefix="sync",
        http_resources=("client",),
        shared_role=SharedRole.NONE,
        single=False,
        routing=Routing.SYNC,
    ),
    WorkerType(
        key="client_reader",
        mdad_type="client_reader",
        name_prefix="client-reader",
        http_resources=("client",),
        shared_role=SharedRole.NONE,
        single=False,
        routing=Routing.CLIENT_READER,
    ),
    WorkerType(
        key="federation_reader",
        mdad_type="federation_reader",
        name_prefix="federation-reader",
        http_resources=("federation",),
        shared_role=SharedRole.NONE,
        single=False,
        routing=Routing.FEDERATION_READER,
    ),
    WorkerType(
        key="generic",
        mdad_type="generic_worker",
        name_prefix="generic",
        http_resources=("client", "federation"),
        shared_role=SharedRole.NONE,
        single=False,
        routing=Routing.GENERIC,
    ),
    WorkerType(
        key="federation_sender",
        mdad_type="federation_sender",
        name_prefix="federation-sender",
        http_resources=(),
        shared_role=SharedRole.FEDERATION_SENDER,
        single=False,
        routing=Routing.NONE,
    ),
    WorkerType(
        key="pusher",
        mdad_type="pusher",
        name_prefix="pusher",
        http_resources=(),
        shared_role=SharedRole.PUSHER,
        single=False,
        routing=Routing.NONE,
    ),
    WorkerType(
        key="appservice",
        mdad_type="appservice",
        name_prefix="appservice",
        http_resources=(),
        shared_role=SharedRole.APPSERVICE,
        single=True,
        routing=Routing.NONE,
    ),
    WorkerType(
        key="user_dir",
        mdad_type="user_dir",
        name_prefix="user-dir",
        http_resources=("client",),
        shared_role=SharedRole.USER_DIRECTORY,
        single=True,
        routing=Routing.USER_DIRECTORY,
    ),
    WorkerType(
        key="media_repository",
        mdad_type="media_repository",
        name_prefix="media-repository",
        http_resources=("media", "client", "federation"),
        shared_role=SharedRole.MEDIA,
        single=False,
        routing=Routing.MEDIA,
        media=True,
    ),
    WorkerType(
        key="background",
        mdad_type="background",
        name_prefix="background",
        http_resources=(),
        shared_role=SharedRole.BACKGROUND,
        single=True,
        routing=Routing.NONE,
    ),
)

# Stream writers are one worker type whose workers each write one stream.
STREAM_WRITER: Final = WorkerType(
    key="stream_writer",
    mdad_type="stream_writer",
    name_prefix="stream-writer",
    http_resources=("client",),
    shared_role=SharedRole.STREAM_WRITER,
    single=False,
    routing=Routing.STREAM,
)
STREAM_WRITER_PORT_KEYS: Final = MappingProxyType(
    {
        "http": "matrix_synapse_workers_stream_writer_workers_http_port_range_start",
        "replication": "matrix_synapse_workers_stream_writer_workers_replication_port_range_start",
        "metrics": "matrix_synapse_workers_stream_writer_workers_metrics_range_start",
    }
)

# In matrix-docker-ansible-deploy's order: stream-writer indexes (and so names and ports) follow it.
STREAMS: Final[tuple[Stream, ...]] = (
    Stream("events", single=False, webserving=False),
    Stream("typing", single=True),
    Stream("to_device", single=True),
    Stream("account_data", single=True),
    Stream("receipts", single=False),
    Stream("presence", single=True),
    Stream("push_rules", single=True),
    Stream("device_lists", single=False),
    Stream("thread_subscriptions", single=False),
    Stream("quarantined_media_changes", single=False, media=True),
)

WORKER_TYPES_BY_KEY: Final[Mapping[str, WorkerType]] = MappingProxyType(
    {t.key: t for t in (*WORKER_TYPES, STREAM_WRITER)}
)
WORKER_TYPES_BY_MDAD_TYPE: Final[Mapping[str, WorkerType]] = MappingProxyType(
    {t.mdad_type: t for t in (*WORKER_TYPES, STREAM_WRITER)}
)
STREAMS_BY_NAME: Final[Mapping[str, Stream]] = MappingProxyType({s.name: s for s in STREAMS})

# Generic workers serve everything the specialised ones split between them; mixing both makes
# the routing ambiguous, so matrix-docker-ansible-deploy forbids it and so do we.
SPECIALISED_TYPE_KEYS: Final = ("room", "sync", "client_reader", "federation_reader")

# Preset worker counts, as matrix-docker-ansible-deploy defines them.
_ONE_WRITER_EACH: Final = {s.name: 1 for s in STREAMS if s.name != "thread_subscriptions"}
PRESETS: Final[Mapping[str, tuple[Mapping[str, int], Mapping[str, int]]]] = MappingProxyType(
    {
        # name: (worker counts by type key, stream-writer counts by stream)
        "little-federation-helper": ({"federation_sender": 1}, {}),
        "one-of-each": (
            {
                "generic": 1,
                "pusher": 1,
                "federation_sender": 1,
                "media_repository": 1,
                "appservice": 1,
                "user_dir": 1,
                "background": 1,
            },
            _ONE_WRITER_EACH,
        ),
        "specialized-workers": (
            {
                "room": 1,
                "sync": 1,
                "client_reader": 1,
                "federation_reader": 1,
                "pusher": 1,
                "federation_sender": 1,
                "media_repository": 1,
                "appservice": 1,
                "user_dir": 1,
                "background": 1,
            },
            _ONE_WRITER_EACH,
        ),
    }
)
