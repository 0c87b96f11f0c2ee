"""Turn ``Settings`` into a worker plan: every process, its listeners and the shared worker config
(the model lives in ``deploys.core.processes``; importing it from here works too).

One machine's processes (``plan_machine``) and the shared config (``shared_config``) are the two
halves of ``build_plan``; the cluster plan (``deploys.core.cluster``) calls the same two for
several machines, with a ``Placement`` saying where each machine sits in the cluster.

Pure: no pyinfra imports. ``build_plan`` also enforces what Synapse itself does not check
(synapse-workers.md §3.4): unique ports across every listener on a machine (nginx's too), ports in
range, and every name that a shared setting references belongs to a planned worker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from deploys.core.processes import (
    MAIN,
    WORKER_UNIT_TEMPLATE,
    Listener,
    Process,
    SharedWorkerConfig,
    WorkerPlan,
    connect_address,
)
from deploys.core.settings import Settings, SettingsError, WorkerEntry, problem
from deploys.core.settings.reader import HIGHEST_PORT, LOWEST_PORT
from deploys.core.settings.worker_list import ENABLED_LIST_KEY
from deploys.core.settings.workers import MAX_WORKERS_PER_TYPE
from deploys.core.worker_types import (
    STREAM_WRITER,
    STREAM_WRITER_PORT_KEYS,
    STREAMS,
    STREAMS_BY_NAME,
    WORKER_TYPES,
    WORKER_TYPES_BY_KEY,
    SharedRole,
    Stream,
    WorkerType,
)

__all__ = [
    "MAIN",
    "WORKER_UNIT_TEMPLATE",
    "Listener",
    "Placement",
    "Process",
    "SharedWorkerConfig",
    "WorkerPlan",
    "build_plan",
    "connect_address",
    "plan_machine",
    "shared_config",
]

MAX_PORT_PROBLEMS: Final = 10


def build_plan(settings: Settings, machine: str) -> WorkerPlan:
    """Plan the main process and every worker on ``machine``.

    Args:
        settings: validated settings.
        machine: the inventory name of the host the processes run on.

    Returns:
        The plan.

    Raises:
        SettingsError: a port out of range or two listeners on one port, naming the settings.
    """
    main, workers, nginx = plan_machine(settings, machine)
    assert main is not None  # the default placement runs main
    return WorkerPlan(main=main, workers=workers, shared=shared_config(main, workers), nginx=nginx)


@dataclass(frozen=True)
class Placement:
    """Where one machine sits in a cluster (the default: alone, as ``build_plan`` plans it).

    Attributes:
        runs_main: the machine runs the main process and nginx.
        first_index: worker type key (``stream_writer`` for every stream) -> the cluster-wide
            number of this machine's first count-based worker of the type, so names from counts
            are unique across machines. Its port is ``start + number % 1000``: one machine's
            numbers of a type are consecutive and at most 1,000, so they never share a port, and
            a worker keeps its port when another moves.
        peer_address: the IP address the cluster's other machines reach this one at: every
            replication, worker HTTP and metrics listener binds it too (None: alone, or a host
            name the operator binds through the bind-address settings).
    """

    runs_main: bool = True
    first_index: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    peer_address: str | None = None


def plan_machine(
    settings: Settings, machine: str, placement: Placement | None = None
) -> tuple[Process | None, tuple[Process, ...], Listener | None]:
    """One machine's processes and nginx listener, their ports checked.

    Returns:
        The main process (None unless ``placement.runs_main``), the workers, nginx's listener
        (None unless the machine runs main and nginx is on).

    Raises:
        SettingsError: a port out of range or two listeners on one port, naming the settings.
    """
    placement = placement or Placement()
    main = _main_process(settings, machine, placement) if placement.runs_main else None
    workers = tuple(_workers(settings, machine, placement))
    nginx = _nginx_listener(settings) if placement.runs_main else None
    _check_ports((*([main] if main else []), *workers), nginx)
    return main, workers, nginx


def _main_process(settings: Settings, machine: str, placement: Placement) -> Process:
    listeners = [
        Listener(
            purpose="http",
            port=settings.http_port,
            bind_addresses=settings.bind_addresses,
            resources=("client", "federation"),
            x_forwarded=settings.x_forwarded,
            source="matrix_synapse_http_port",
        )
    ]
    if settings.workers.enabled:
        listeners.append(
            _listener(
                settings,
                purpose="replication",
                port=settings.replication_port,
                resources=(),
                source="matrix_synapse_replication_http_port",
                peer_address=placement.peer_address,
            )
        )
    if settings.metrics_enabled:
        listeners.append(
            _listener(
                settings,
                purpose="metrics",
                port=settings.metrics_port,
                resources=(),
                source="matrix_synapse_metrics_port",
            )
        )
    return Process(name=MAIN, worker_type=None, machine=machine, listeners=tuple(listeners))


def _nginx_listener(settings: Settings) -> Listener | None:
    nginx = settings.nginx
    if not nginx.enabled:
        return None
    return Listener(
        purpose="http",
        port=nginx.listen_port,
        bind_addresses=nginx.listen_addresses,
        resources=(),
        x_forwarded=False,
        source="matrix_synapse_nginx_listen_port",
    )


@dataclass(frozen=True)
class _Spec:
    """A worker before listeners are built: where each of its ports comes from."""

    name: str
    worker_type: WorkerType
    stream: Stream | None
    ports: Mapping[str, tuple[int | None, str]]  # purpose -> (port, source setting)


def _workers(settings: Settings, machine: str, placement: Placement) -> Iterator[Process]:
    w = settings.workers
    if not w.enabled:
        return
    specs = (
        _specs_from_list(w.enabled_list)
        if w.enabled_list
        else _specs_from_counts(settings, placement.first_index)
    )
    problems: list[str] = []
    processes = [
        _process(settings, machine, spec, problems, placement.peer_address) for spec in specs
    ]
    if problems:
        raise SettingsError(problems)
    yield from processes


def _specs_from_counts(settings: Settings, first_index: Mapping[str, int]) -> Iterator[_Spec]:
    w = settings.workers
    starts = w.port_starts

    def port(key: str | None, index: int) -> tuple[int | None, str]:
        # Alone on a machine the index is below 1,000; see Placement.first_index for a cluster.
        return (None, "") if key is None else (starts[key] + index % MAX_WORKERS_PER_TYPE, key)

    for t in WORKER_TYPES:
        if t.key == "federation_sender":  # matrix-docker-ansible-deploy's order
            first = first_index.get(STREAM_WRITER.key, 0)
            yield from _stream_writer_specs(w.stream_counts, port, first)
        first = first_index.get(t.key, 0)
        for index in range(first, first + w.counts[t.key]):
            yield _Spec(
                name=f"{t.name_prefix}-{index}",
                worker_type=t,
                stream=None,
                ports={
                    "http": port(t.http_port_key, index),
                    "metrics": port(t.metrics_port_key, index),
                },
            )


def _stream_writer_specs(stream_counts: Mapping[str, int], port, index: int) -> Iterator[_Spec]:
    # One global index over all streams, in the fixed stream order, names and ports follow it.
    for stream in STREAMS:
        for _ in range(stream_counts[stream.name]):
            yield _Spec(
                name=f"stream-writer-{index}-{stream.name.replace('_', '-')}",
                worker_type=STREAM_WRITER,
                stream=stream,
                ports={
                    "http": port(STREAM_WRITER_PORT_KEYS["http"], index)
                    if stream.webserving
                    else (None, ""),
                    "replication": port(STREAM_WRITER_PORT_KEYS["replication"], index),
                    "metrics": port(STREAM_WRITER_PORT_KEYS["metrics"], index),
                },
            )
            index += 1


def _specs_from_list(entries: tuple[WorkerEntry, ...]) -> Iterator[_Spec]:
    key = ENABLED_LIST_KEY
    for index, e in enumerate(entries):
        t = WORKER_TYPES_BY_KEY[e.type_key]
        source = f"{key}[{index}]"
        yield _Spec(
            name=e.name,
            worker_type=t,
            stream=STREAMS_BY_NAME[e.stream] if e.stream else None,
            ports={
                "http": (e.http_port, f"{source}.port"),
                "replication": (e.replication_port, f"{source}.replication_port"),
                "metrics": (e.metrics_port, f"{source}.metrics_port"),
            },
        )


def _process(
    settings: Settings, machine: str, spec: _Spec, problems: list[str], peer_address: str | None
) -> Process:
    t, stream = spec.worker_type, spec.stream
    media = t.media or bool(stream and stream.media)
    resources = t.http_resources
    if stream is not None and not stream.webserving:
        resources = ()
    if media and "media" not in resources:
        resources = ("media", *resources)
    wanted = {
        "http": bool(resources),
        "replication": t is STREAM_WRITER,
        "metrics": settings.metrics_enabled,
    }
    listeners = []
    for purpose, needed in wanted.items():
        port, source = spec.ports.get(purpose, (None, ""))
        if not needed:
            continue
        if port is None:
            problems.append(
                problem(
                    source or spec.name,
                    port,
                    f"worker {spec.name} needs a {purpose} port; allowed: "
                    f"an integer from {LOWEST_PORT} to {HIGHEST_PORT}",
                )
            )
            continue
        listeners.append(
            _listener(
                settings,
                purpose=purpose,
                port=port,
                resources=resources,
                source=source,
                peer_address=peer_address,
            )
        )
    return Process(
        name=spec.name,
        worker_type=t,
        machine=machine,
        listeners=tuple(listeners),
        stream=stream,
        media=media,
    )


def _listener(
    settings: Settings,
    *,
    purpose: str,
    port: int,
    resources: tuple[str, ...],
    source: str,
    peer_address: str | None = None,
) -> Listener:
    if purpose == "replication":
        return Listener(
            purpose=purpose,
            port=port,
            bind_addresses=_with_peer(settings.replication_bind_addresses, peer_address),
            resources=("replication",),
            x_forwarded=False,
            source=source,
        )
    if purpose == "metrics":
        return Listener(
            purpose=purpose,
            port=port,
            # Peers include the main host's Prometheus, which scrapes every machine.
            bind_addresses=_with_peer(settings.metrics_bind_addresses, peer_address),
            resources=(),
            x_forwarded=False,
            source=source,
        )
    return Listener(
        purpose=purpose,
        port=port,
        bind_addresses=_with_peer(settings.bind_addresses, peer_address),
        resources=resources,
        x_forwarded=settings.x_forwarded,
        source=source,
    )


def _with_peer(bind_addresses: tuple[str, ...], peer_address: str | None) -> tuple[str, ...]:
    """``bind_addresses`` plus the address peers reach, unless already bound: by itself or by
    the wildcard of its family (the kernel refuses both on one port)."""
    if peer_address is None:
        return bind_addresses
    peer = ipaddress.ip_address(peer_address)
    for bound in map(ipaddress.ip_address, bind_addresses):
        if bound == peer or (bound.is_unspecified and bound.version == peer.version):
            return bind_addresses
    return (*bind_addresses, str(peer))


def _check_ports(processes: tuple[Process, ...], nginx: Listener | None) -> None:
    """Every listener on the machine, nginx's included, in range and on a port of its own.

    Synapse's listeners get one port each whatever their addresses (the documented layout, and
    ``instance_map`` names a process by port). nginx collides with one only where their addresses
    overlap (the same address, or either unspecified): that is where the kernel would refuse it.
    nginx comes last, so a collision names its setting and the Synapse one it meets.
    """
    sockets = [(p.name, p.machine, listener) for p in processes for listener in p.listeners]
    if nginx is not None:
        sockets.append(("nginx", processes[0].machine, nginx))
    problems: list[str] = []
    owners: dict[tuple[str, int], list[tuple[str, Listener]]] = {}
    for name, machine, listener in sockets:
        if listener is not nginx and not LOWEST_PORT <= listener.port <= HIGHEST_PORT:
            problems.append(
                problem(
                    listener.source,
                    listener.port,
                    f"{name} would get {listener.purpose} port "
                    f"{listener.port}; allowed: {LOWEST_PORT} to {HIGHEST_PORT}",
                )
            )
            continue
        slot = owners.setdefault((machine, listener.port), [])
        taken = next(
            (
                (other, other_listener)
                for other, other_listener in slot
                if listener is not nginx or _overlap(listener, other_listener)
            ),
            None,
        )
        if taken is not None:
            other, other_listener = taken
            problems.append(
                problem(
                    listener.source,
                    listener.port,
                    f"{name} ({listener.purpose}) would listen on port {listener.port}, "
                    f"already taken by {other} ({other_listener.purpose}, from "
                    f"{other_listener.source}); allowed: a port no other listener uses",
                )
            )
            continue
        slot.append((name, listener))
    if len(problems) > MAX_PORT_PROBLEMS:  # one bad range start can collide a thousand times
        extra = len(problems) - MAX_PORT_PROBLEMS
        problems = [*problems[:MAX_PORT_PROBLEMS], f"... and {extra} more port problems"]
    if problems:
        raise SettingsError(problems)


def _overlap(a: Listener, b: Listener) -> bool:
    ours = [ipaddress.ip_address(x) for x in a.bind_addresses]
    theirs = [ipaddress.ip_address(x) for x in b.bind_addresses]
    return any(x == y or x.is_unspecified or y.is_unspecified for x in ours for y in theirs)


def shared_config(
    main: Process,
    workers: tuple[Process, ...],
    reach: Callable[[Process, Listener], str] | None = None,
) -> SharedWorkerConfig:
    """The settings every process reads to know which process does what.

    Args:
        main: the main process.
        workers: every worker that reads it (a cluster's: of every machine, in machine order).
        reach: the address other processes connect to a listener at (default: on the same
            machine, ``connect_address`` of its bind addresses).

    Raises:
        AssertionError: a shared setting names a worker not in ``workers`` (a bug, not input).
    """

    def names(role: SharedRole) -> tuple[str, ...]:
        return tuple(w.name for w in workers if w.worker_type and w.worker_type.shared_role is role)

    def first(role: SharedRole) -> str | None:
        return next(iter(names(role)), None)

    instance_map: dict[str, tuple[str, int]] = {}
    for process in (main, *workers):
        replication = process.listener("replication")
        if replication is not None:
            instance_map[process.name] = (
                reach(process, replication)
                if reach
                else connect_address(replication.bind_addresses),
                replication.port,
            )
    stream_writers = {
        s.name: tuple(w.name for w in workers if w.stream is s)
        for s in STREAMS
        if any(w.stream is s for w in workers)  # Synapse rejects empty lists (synapse#13804)
    }
    media_workers = names(SharedRole.MEDIA)
    shared = SharedWorkerConfig(
        instance_map=MappingProxyType(instance_map if workers else {}),
        stream_writers=MappingProxyType(stream_writers),
        federation_sender_instances=names(SharedRole.FEDERATION_SENDER),
        pusher_instances=names(SharedRole.PUSHER),
        run_background_tasks_on=first(SharedRole.BACKGROUND),
        notify_appservices_from_worker=first(SharedRole.APPSERVICE),
        update_user_directory_from_worker=first(SharedRole.USER_DIRECTORY),
        media_instance_running_background_jobs=media_workers[0] if media_workers else None,
        enable_media_repo=not media_workers,
    )
    missing = shared.referenced_names() - {w.name for w in workers}
    if missing:  # a bug in this module, not bad input: every name comes from the worker list
        raise AssertionError(f"shared config names unplanned workers: {sorted(missing)}")
    return shared
