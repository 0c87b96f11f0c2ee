"""One cluster plan for a homeserver whose workers run on several machines.

Pure: no pyinfra imports. Every inventory host that shares a ``matrix_domain`` belongs to one
cluster (``clusters``); ``plan_cluster`` turns the settings of all its hosts, in inventory order,
into one ``ClusterPlan``, the same whichever host computes it, since each host sees the whole
inventory and the function reads nothing else:

- the machines: the one ``main`` host first, then the ``workers`` hosts in inventory order
  (``retired`` hosts run nothing and are left out of the plan);
- each machine's workers, planned by its own worker keys with the one-machine planner
  (``deploys.core.plan.plan_machine``). Names from counts are numbered across the cluster in
  machine order (main's ``generic-0`` .. ``generic-9``, then the next machine's ``generic-10``
  ..), so they are unique; a hand-written list names its own. A count change renumbers the
  count-based workers of the machines after it: moving workers between neighbouring machines
  (one count down, the next one up) moves exactly those workers, by name, and every other
  worker keeps its name and port (ports are ``start + number % 1000``). Stream writers share one
  numbering over every stream, as on one machine, so moving one renumbers the writers after it;
- one shared worker config (``instance_map``, ``stream_writers``, federation senders, pushers,
  ``run_background_tasks_on``, ...) from every machine's workers
  (``deploys.core.plan.shared_config``), each listener reached at its machine's private address;
- each host's view (``ClusterPlan.view``): its own workers and the cluster's shared config.

With one machine the plan is exactly ``build_plan``'s: loopback addresses, nothing else bound.
With more, every replication, worker HTTP and metrics listener also binds its machine's private
address (an IP; a host name is the operator's to bind, and is refused while nothing but loopback
is), so the main host's Prometheus scrapes every machine.

The rules between hosts are refused before any host changes, all at once, each naming the hosts
and keys: one main (among the hosts not retired), a private address on every machine of a
multi-machine cluster and no address twice, worker names unique across the cluster, a
single-instance duty (Synapse's: the typing, to_device, account_data, presence and push_rules
writers; appservice, user directory and background workers) on one worker of the cluster, media
repository workers on one machine unless the media store is shared storage, generic workers not
mixed with specialised ones (nginx on main routes to all of them), and workers enabled on the
main host while any machine runs workers (they replicate from main's replication listener).

Wired into the deploy (README, "Several machines"): ``deploys/components/plan.py`` gathers every
inventory host's data once per run and cluster (``cluster_settings``, ``plan_cluster``,
``secret_problems``); ``deploys.core.render.desired_state`` renders a host's view (a workers host:
no main unit, no nginx, Redis and PostgreSQL at the main host's private address; the main host:
nginx routes and metrics targets from ``combined``); ``retired_state`` removes everything of ours
from a retired host; ``deploys/components/configure.py`` orders the machines (moved workers
stopped on their old machine first, then main, then the workers hosts in parallel).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from deploys.core.plan import (
    Listener,
    Placement,
    Process,
    SharedWorkerConfig,
    WorkerPlan,
    plan_machine,
    shared_config,
)
from deploys.core.settings import Settings, SettingsError, parse_settings
from deploys.core.settings.cluster import ROLE_MAIN, ROLE_RETIRED
from deploys.core.settings.worker_list import ENABLED_LIST_KEY
from deploys.core.worker_types import (
    SPECIALISED_TYPE_KEYS,
    STREAM_WRITER,
    STREAMS,
    WORKER_TYPES,
    WORKER_TYPES_BY_KEY,
)

ROLE_KEY: Final = "matrix_synapse_role"
ADDRESS_KEY: Final = "matrix_synapse_private_address"
MEDIA_SHARED_KEY: Final = "matrix_synapse_media_store_shared"
DOMAIN_KEY: Final = "matrix_domain"
SECRET_KEY: Final = "matrix_synapse_worker_replication_secret"
REDIS_PASSWORD_KEY: Final = "matrix_synapse_redis_password"
MAX_NAME_PROBLEMS: Final = 10  # one misplaced list can duplicate a thousand names
# The listeners other machines connect to, and the setting that says where each binds.
PEER_LISTENERS: Final = (
    ("replication", "matrix_synapse_replication_bind_addresses"),
    ("http", "matrix_synapse_bind_addresses"),
)


@dataclass(frozen=True)
class ClusterPlan:
    """Every process of one homeserver, on every machine, and the config they share.

    Attributes:
        domain: the homeserver name.
        main_host: the inventory host that runs the main process and nginx.
        roles: every host of the cluster (retired ones too) -> its role, in inventory order.
        private_addresses: every machine -> the address its peers reach it at (None while the
            cluster has one machine and none was given).
        main: the main process.
        machine_workers: every machine (main first, then inventory order) -> its workers.
        shared: the shared worker config every process of every machine reads.
        nginx: the main host's nginx listener (None when nginx is off).
    """

    domain: str
    main_host: str
    roles: Mapping[str, str]
    private_addresses: Mapping[str, str | None]
    main: Process
    machine_workers: Mapping[str, tuple[Process, ...]]
    shared: SharedWorkerConfig
    nginx: Listener | None

    @property
    def machines(self) -> tuple[str, ...]:
        """The hosts that run something: main first, then the workers hosts."""
        return tuple(self.machine_workers)

    @property
    def multi_machine(self) -> bool:
        return len(self.machine_workers) > 1

    @property
    def workers(self) -> tuple[Process, ...]:
        """Every worker of the cluster, machine by machine."""
        return tuple(w for workers in self.machine_workers.values() for w in workers)

    @property
    def combined(self) -> WorkerPlan:
        """The whole cluster as one plan: what nginx, the metrics targets and PostgreSQL's
        sizing on the main host see."""
        return WorkerPlan(self.main, self.workers, self.shared, self.nginx)

    def view(self, host: str) -> WorkerPlan | None:
        """What ``host`` renders: its own workers, the cluster's shared config, nginx on the
        main host. ``main`` is the cluster's main process: on a workers host it runs elsewhere
        (``runs_main`` False, ``peers``: the main host's processes, which Redis counts too).
        None for a retired host.

        Raises:
            KeyError: ``host`` is not in this cluster.
        """
        if self.roles[host] == ROLE_RETIRED:
            return None
        if host == self.main_host:
            return WorkerPlan(self.main, self.machine_workers[host], self.shared, self.nginx)
        return WorkerPlan(
            self.main,
            self.machine_workers[host],
            self.shared,
            None,
            runs_main=False,
            peers=len(self.own_processes(self.main_host)),
        )

    def own_processes(self, host: str) -> tuple[Process, ...]:
        """The processes that run on ``host`` (main's only on the main host)."""
        if self.roles[host] == ROLE_RETIRED:
            return ()
        workers = self.machine_workers[host]
        return (self.main, *workers) if host == self.main_host else workers


def clusters(domains: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Group hosts into clusters.

    Args:
        domains: every inventory host -> its ``matrix_domain``, in inventory order (the entry
            passes the hosts of the inventory group it deploys, or the whole inventory: a
            homeserver name has one main process whatever the groups).

    Returns:
        ``matrix_domain`` -> its hosts, in inventory order.
    """
    grouped: dict[str, list[str]] = {}
    for host, domain in domains.items():
        grouped.setdefault(domain, []).append(host)
    return {domain: tuple(hosts) for domain, hosts in grouped.items()}


def plan_inventory(data: Mapping[str, Mapping[str, Any]], host: str) -> ClusterPlan:
    """The plan of ``host``'s cluster, from every inventory host's data.

    Args:
        data: every inventory host -> its host data (``host.data.dict()``), in inventory order.
        host: the host whose cluster to plan.

    Raises:
        SettingsError: a bad setting on any host of the cluster, or a rule between its hosts,
            each problem naming its host.
    """
    return plan_cluster(cluster_settings(data, host))


def cluster_settings(data: Mapping[str, Mapping[str, Any]], host: str) -> dict[str, Settings]:
    """The settings of every host of ``host``'s cluster, in inventory order (``plan_inventory``'s
    arguments and errors)."""
    members = clusters({h: str(d.get(DOMAIN_KEY)) for h, d in data.items()})[
        str(data[host].get(DOMAIN_KEY))
    ]
    problems: list[str] = []
    settings: dict[str, Settings] = {}
    for member in members:
        try:
            settings[member] = parse_settings(data[member])
        except SettingsError as error:
            problems += [f"{member}: {p}" for p in error.problems]
    if problems:
        raise SettingsError(problems)
    return settings


def plan_cluster(hosts: Mapping[str, Settings]) -> ClusterPlan:
    """Plan every machine of one cluster.

    Args:
        hosts: every host of the cluster -> its settings, in inventory order.

    Returns:
        The plan, the same for the same hosts and settings whichever host computes it.

    Raises:
        SettingsError: each problem naming its hosts and keys: the rules on roles and addresses
            (all at once), else each machine's own plan (ports; every machine's problems at
            once), else the rules on the workers of every machine together (all at once).
    """
    domains = {s.domain for s in hosts.values()}
    if len(domains) != 1:
        raise ValueError(f"one cluster is one matrix_domain, got {sorted(domains)}")
    active = {h: s for h, s in hosts.items() if s.cluster.role != ROLE_RETIRED}
    problems = _host_rules(active)
    if problems:  # without one main there is nothing to number the machines from
        raise SettingsError(problems)
    main_host = next(h for h, s in active.items() if s.cluster.role == ROLE_MAIN)
    machines = {main_host: active[main_host], **active}
    multi = len(machines) > 1
    addresses = {h: s.cluster.private_address for h, s in machines.items()}

    main: Process | None = None
    nginx: Listener | None = None
    machine_workers: dict[str, tuple[Process, ...]] = {}
    for host, placement in zip(machines, _placements(machines, main_host, multi), strict=True):
        try:
            own_main, workers, own_nginx = plan_machine(machines[host], host, placement)
        except SettingsError as error:
            problems += [f"{host}: {p}" for p in error.problems]
            continue
        if own_main is not None:
            main, nginx = own_main, own_nginx
        machine_workers[host] = workers
    if not problems:
        problems += _worker_rules(machines, machine_workers, main, multi)
    if problems:
        raise SettingsError(problems)
    assert main is not None  # the main host's plan_machine ran without problems

    all_workers = tuple(w for workers in machine_workers.values() for w in workers)
    return ClusterPlan(
        domain=next(iter(domains)),
        main_host=main_host,
        roles=MappingProxyType({h: s.cluster.role for h, s in hosts.items()}),
        private_addresses=MappingProxyType(addresses),
        main=main,
        machine_workers=MappingProxyType(machine_workers),
        shared=shared_config(main, all_workers, _at_private_address(addresses) if multi else None),
        nginx=nginx,
    )


def _placements(
    machines: Mapping[str, Settings], main_host: str, multi: bool
) -> Iterable[Placement]:
    """Each machine's place: count-based numbers continue from the machines before it."""
    numbered: Counter[str] = Counter()
    for host, settings in machines.items():
        address = settings.cluster.private_address
        yield Placement(
            runs_main=host == main_host,
            first_index=MappingProxyType(dict(numbered)),
            peer_address=address if multi and _is_ip(address) else None,
        )
        w = settings.workers
        numbered.update(w.counts)
        numbered[STREAM_WRITER.key] += sum(w.stream_counts.values())


def _at_private_address(
    addresses: Mapping[str, str | None],
) -> Callable[[Process, Listener], str]:
    """Every listener is reached at its machine's private address (each machine has one: the
    host rules checked it)."""

    def reach(process: Process, _listener: Listener) -> str:
        address = addresses[process.machine]
        assert address is not None
        return address

    return reach


def _is_ip(value: str | None) -> bool:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _hosts(hosts: Iterable[str]) -> str:
    hosts = list(hosts)
    return ("host " if len(hosts) == 1 else "hosts ") + ", ".join(hosts)


def _host_rules(active: Mapping[str, Settings]) -> list[str]:
    """One main; with several machines, each with a private address of its own."""
    problems = []
    mains = [h for h, s in active.items() if s.cluster.role == ROLE_MAIN]
    if len(mains) != 1:
        where = _hosts(mains) if mains else _hosts(active) if active else "no host"
        problems.append(
            f"{where}: {ROLE_KEY}: {len(mains)} main hosts among the cluster's machines; "
            f"allowed: exactly one host with {ROLE_KEY} = 'main' (it runs the main process and "
            "nginx), the others 'workers' or 'retired'"
        )
    if len(active) > 1:
        missing = [h for h, s in active.items() if s.cluster.private_address is None]
        if missing:
            problems.append(
                f"{_hosts(missing)}: {ADDRESS_KEY} = None: the cluster has {len(active)} "
                "machines, which reach each other at their private addresses; allowed: the IP "
                "address or host name the other machines reach this one at"
            )
        by_address: dict[str, list[str]] = {}
        for host, s in active.items():
            if s.cluster.private_address is not None:
                by_address.setdefault(_normal(s.cluster.private_address), []).append(host)
        for address, owners in by_address.items():
            if len(owners) > 1:
                problems.append(
                    f"{_hosts(owners)}: {ADDRESS_KEY} = {address!r} on {len(owners)} machines; "
                    "allowed: one address per machine (one machine is one inventory host)"
                )
    return problems


def limited_run_problem(
    cluster: ClusterPlan, host: str, running: Iterable[str], left_out: Iterable[str]
) -> str | None:
    """Why ``host`` must not apply in a run that leaves out (``--limit``) the machines
    ``left_out`` of its cluster, or None. Moved workers stop on their old machine only when it
    is in the run, so a worker this machine would start (planned here, not ``running`` here
    now) may still run on a machine left out: two processes of one name must never run at
    once, so the run is refused. A run that starts nothing new here is safe."""
    left = [h for h in cluster.roles if h in set(left_out) and h != host]
    if not left:
        return None
    new = sorted({w.name for w in cluster.machine_workers.get(host, ())} - set(running))
    if not new:
        return None
    shown = ", ".join(new[:MAX_NAME_PROBLEMS]) + (
        f" and {len(new) - MAX_NAME_PROBLEMS} more" if len(new) > MAX_NAME_PROBLEMS else ""
    )
    return (
        f"host {host}: would start {shown}, not running here now, while the run (--limit) "
        f"leaves out {_hosts(left)} of the cluster {cluster.domain}, where they may still run; "
        "two processes of one name must never run at once: run without --limit, or include "
        "those hosts"
    )


def secret_problems(hosts: Mapping[str, Settings]) -> list[str]:
    """The secrets a cluster of more than one machine shares: the replication secret, the Redis
    password, the signing key, the macaroon and form secrets, given on every machine and the
    same on each (values never printed); and Redis over the network, not a Unix socket. Checked
    by the deploy's entry (``deploys/components/plan.py``) with the plan, before any host
    changes; one machine needs neither."""
    active = {h: s for h, s in hosts.items() if s.cluster.role != ROLE_RETIRED}
    if len(active) < 2:
        return []
    sockets = [h for h, s in active.items() if s.redis.path]
    return [
        *(
            [
                f"{_hosts(sockets)}: matrix_synapse_redis_path is a Unix socket, which the "
                "cluster's other machines cannot reach; allowed: None (Redis at "
                "matrix_synapse_redis_host and _port)"
            ]
            if sockets
            else []
        ),
        *_shared_secret(
            active, SECRET_KEY, {h: s.cluster.replication_secret for h, s in active.items()}
        ),
        *_shared_secret(
            active, REDIS_PASSWORD_KEY, {h: s.redis.password for h, s in active.items()}
        ),
        *_shared_secret(
            active,
            "matrix_synapse_signing_key",
            {h: s.cluster.signing_key for h, s in active.items()},
        ),
        *_shared_secret(
            active,
            "matrix_synapse_macaroon_secret_key",
            {h: s.cluster.macaroon_secret_key for h, s in active.items()},
        ),
        *_shared_secret(
            active,
            "matrix_synapse_form_secret",
            {h: s.cluster.form_secret for h, s in active.items()},
        ),
    ]


def _shared_secret(
    active: Mapping[str, Settings], key: str, values: Mapping[str, str | None]
) -> list[str]:
    missing = [h for h, v in values.items() if v is None]
    if missing:
        return [
            f"{_hosts(missing)}: {key} = None: the cluster has {len(active)} machines, which "
            "must share it; allowed: the same secret on every host (e.g. in group_data)"
        ]
    if len(set(values.values())) > 1:
        return [
            f"{_hosts(values)}: {key} differs between the hosts (values not shown); allowed: "
            "the same secret on every host of the cluster"
        ]
    return []


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address.lower().rstrip(".")


def _worker_rules(
    machines: Mapping[str, Settings],
    machine_workers: Mapping[str, tuple[Process, ...]],
    main: Process | None,
    multi: bool,
) -> list[str]:
    """Rules on the workers of every machine together."""
    problems: list[str] = []

    def key(host: str, count_key: str) -> str:
        return ENABLED_LIST_KEY if machines[host].workers.enabled_list else count_key

    def keys(hosts: Iterable[str], count_key: str) -> str:
        return ", ".join(dict.fromkeys(f"{h}: {key(h, count_key)}" for h in hosts))

    # Unique names.
    owners: dict[str, list[str]] = {}
    for host, workers in machine_workers.items():
        for w in workers:
            owners.setdefault(w.name, []).append(host)
    duplicated = [(name, hosts) for name, hosts in owners.items() if len(hosts) > 1]
    for name, hosts in duplicated[:MAX_NAME_PROBLEMS]:
        problems.append(
            f"{_hosts(hosts)}: worker {name} is planned on {len(hosts)} machines (from "
            f"{keys(hosts, 'the worker counts')}); allowed: a worker name unique across the "
            f"cluster (names from counts are numbered across it: rename the {ENABLED_LIST_KEY} "
            "entry)"
        )
    if len(duplicated) > MAX_NAME_PROBLEMS:
        problems.append(f"... and {len(duplicated) - MAX_NAME_PROBLEMS} more duplicated names")

    # Synapse's single-instance duties: one worker in the whole cluster.
    for t in WORKER_TYPES:
        if t.single:
            hosts = [w.machine for ws in machine_workers.values() for w in ws if w.worker_type is t]
            if len(hosts) > 1:
                problems.append(
                    f"{_hosts(dict.fromkeys(hosts))}: {len(hosts)} {t.mdad_type} workers in the "
                    f"cluster ({keys(hosts, t.count_key)}); Synapse runs this duty on one "
                    "worker; allowed: one in the whole cluster"
                )
    for s in STREAMS:
        if s.single:
            hosts = [w.machine for ws in machine_workers.values() for w in ws if w.stream is s]
            if len(hosts) > 1:
                problems.append(
                    f"{_hosts(dict.fromkeys(hosts))}: {len(hosts)} {s.name} stream writers in "
                    f"the cluster ({keys(hosts, s.count_key)}); Synapse accepts one {s.name} "
                    "writer; allowed: one in the whole cluster"
                )

    # Media: Synapse needs one media store for every process that loads the media repository.
    media = [h for h, ws in machine_workers.items() if any(w.media for w in ws)]
    if len(media) > 1 and not all(machines[h].cluster.media_store_shared for h in media):
        problems.append(
            f"{_hosts(media)}: media repository workers on {len(media)} machines, and "
            f"{MEDIA_SHARED_KEY} is not True on each; Synapse needs one media store for all of "
            f"them; allowed: media workers on one machine, or {MEDIA_SHARED_KEY} = True on "
            "every one of them when matrix_synapse_media_store_path is shared storage"
        )

    # nginx on main routes to every machine's workers: generic and specialised do not mix.
    def hosts_of(type_keys: Iterable[str]) -> list[str]:
        wanted = {WORKER_TYPES_BY_KEY[k] for k in type_keys}
        return [h for h, ws in machine_workers.items() if any(w.worker_type in wanted for w in ws)]

    generic, specialised = hosts_of(["generic"]), hosts_of(SPECIALISED_TYPE_KEYS)
    if generic and specialised:
        problems.append(
            f"{_hosts(dict.fromkeys([*generic, *specialised]))}: generic workers on "
            f"{', '.join(generic)} and specialised workers (room, sync, client_reader, "
            f"federation_reader) on {', '.join(specialised)}; nginx routes to all of them; "
            "allowed: one kind in the whole cluster"
        )

    # Workers replicate from main's replication listener, which exists only with workers on.
    if main is not None and main.listener("replication") is None:
        running = [h for h, ws in machine_workers.items() if ws]
        if running:
            problems.append(
                f"host {main.machine}: matrix_synapse_workers_enabled = False on the main host, "
                f"but {_hosts(running)} run workers, which replicate from the main process; "
                "allowed: True on the main host"
            )

    # A host name cannot be bound by the plan: the operator binds its IP.
    if multi:
        for host, s in machines.items():
            address = s.cluster.private_address
            if address is None or _is_ip(address):
                continue
            own = (main,) if main is not None and main.machine == host else ()
            unreachable: dict[str, tuple[str, ...]] = {}
            for process in (*own, *machine_workers[host]):
                for purpose, bind_key in PEER_LISTENERS:
                    listener = process.listener(purpose)
                    if listener is None or (process.is_main and purpose == "http"):
                        continue  # main's HTTP listener serves nginx on its own machine
                    if all(ipaddress.ip_address(a).is_loopback for a in listener.bind_addresses):
                        unreachable.setdefault(bind_key, listener.bind_addresses)
            for bind_key, bound in unreachable.items():
                problems.append(
                    f"host {host}: {bind_key} = {list(bound)!r}: {ADDRESS_KEY} = {address!r} is "
                    "a host name the plan cannot bind, and the other machines cannot reach a "
                    f"loopback listener; allowed: the IP address {address} resolves to among "
                    "the bind addresses"
                )
    return problems
