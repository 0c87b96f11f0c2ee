"""What runs on one machine: the processes, their listeners and the shared worker config.

Pure data, no rules: ``deploys.core.plan`` builds these from the settings (and checks them);
``deploys.core.routing`` and ``deploys.core.render`` read them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from deploys.core.worker_types import Stream, WorkerType
from deploys.host.units import MAIN, MAIN_UNIT, worker_unit

if TYPE_CHECKING:
    from deploys.core.settings import Settings

WORKER_UNIT_TEMPLATE: Final = "matrix-synapse-worker@.service"


@dataclass(frozen=True)
class Listener:
    """One listening socket of one process.

    ``purpose`` is ``http`` (client/federation/media), ``replication`` or ``metrics``;
    ``source`` is the setting the port came from, so a collision names what to change.
    """

    purpose: str
    port: int
    bind_addresses: tuple[str, ...]
    resources: tuple[str, ...]
    x_forwarded: bool
    source: str

    @property
    def synapse_type(self) -> str:
        return "metrics" if self.purpose == "metrics" else "http"


@dataclass(frozen=True)
class Process:
    """The main process or one worker, on one machine."""

    name: str
    worker_type: WorkerType | None  # None for main
    machine: str
    listeners: tuple[Listener, ...]
    stream: Stream | None = None
    media: bool = False

    @property
    def is_main(self) -> bool:
        return self.worker_type is None

    @property
    def unit(self) -> str:
        return MAIN_UNIT if self.is_main else worker_unit(self.name)

    @property
    def app(self) -> str | None:
        return None if self.worker_type is None else self.worker_type.app

    def listener(self, purpose: str) -> Listener | None:
        return next((x for x in self.listeners if x.purpose == purpose), None)


@dataclass(frozen=True)
class SharedWorkerConfig:
    """The settings every process reads to know which process does what."""

    instance_map: Mapping[str, tuple[str, int]]
    stream_writers: Mapping[str, tuple[str, ...]]
    federation_sender_instances: tuple[str, ...]
    pusher_instances: tuple[str, ...]
    run_background_tasks_on: str | None
    notify_appservices_from_worker: str | None
    update_user_directory_from_worker: str | None
    media_instance_running_background_jobs: str | None
    enable_media_repo: bool

    def referenced_names(self) -> set[str]:
        names = set(self.instance_map) - {MAIN}
        for writers in self.stream_writers.values():
            names.update(writers)
        names.update(self.federation_sender_instances, self.pusher_instances)
        singles = (
            self.run_background_tasks_on,
            self.notify_appservices_from_worker,
            self.update_user_directory_from_worker,
            self.media_instance_running_background_jobs,
        )
        names.update(n for n in singles if n)
        return names


@dataclass(frozen=True)
class WorkerPlan:
    """The Synapse processes of one machine and the shared config that ties them together.

    ``nginx`` is the listener of the nginx server in front of them (None when nginx is off): not a
    Synapse process, but its port is checked with theirs. ``runs_main``: the main process runs on
    this machine (False on a cluster's workers host, ``deploys.core.cluster``: ``main`` runs
    elsewhere); ``peers`` counts the processes of other machines that are up before this one
    applies (the main host's), so Redis counts them too.
    """

    main: Process
    workers: tuple[Process, ...]
    shared: SharedWorkerConfig
    nginx: Listener | None
    runs_main: bool = True
    peers: int = 0

    @property
    def processes(self) -> tuple[Process, ...]:
        """The processes that run on this machine."""
        return (self.main, *self.workers) if self.runs_main else self.workers

    def worker(self, name: str) -> Process:
        return next(w for w in self.workers if w.name == name)

    def database_connections(self, settings: Settings) -> int:
        """Upper bound of PostgreSQL connections the pools may open together."""
        db = settings.database
        return db.main_cp_max + len(self.workers) * db.workers_cp_max


def connect_address(bind_addresses: tuple[str, ...]) -> str:
    """The address other processes on the machine use to reach a listener."""
    address = ipaddress.ip_address(bind_addresses[0])
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "::1"
    return str(address)
