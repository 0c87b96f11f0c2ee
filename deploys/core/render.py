"""Render every file the deploy writes on a host: path -> content, mode, owner, and what a change
to it means for the services. Pure: templates in, bytes out; nothing here talks to a host.

The only module that renders templates (``templates/``): the plan (``deploys.core.plan``) and the
nginx routes (``deploys.core.routing``) are models; this module turns them into files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import jinja2
import yaml

from deploys.core.metrics import file_sd_json, scrape_targets
from deploys.core.processes import (
    WORKER_UNIT_TEMPLATE,
    Listener,
    Process,
    WorkerPlan,
    connect_address,
)
from deploys.core.routing import (
    LOG_FORMAT,
    MAIN_UPSTREAM,
    UPSTREAM_HEADER,
    UPSTREAM_HEADER_VARIABLE,
    nginx_routes,
)
from deploys.core.settings import REPO_ROOT, NginxSettings, Settings
from deploys.core.tls import CERTBOT_DROPIN, TlsServers, certbot_dropin, tls_servers
from deploys.host.manifest import Directory, DrainSpec, Readiness, RedisCheck, SynapseCheck
from deploys.host.units import EVERY_PROCESS, MAIN, MAIN_UNIT, TARGET_UNIT

if TYPE_CHECKING:
    from deploys.core.cluster import ClusterPlan

TEMPLATES_DIR: Final = REPO_ROOT / "templates"
LIMITS_DROPIN: Final = "50-pyinfra-synapse-limits.conf"
SECRET_NAMES: Final = ("replication", "macaroon", "form", "registration")


@dataclass(frozen=True)
class Paths:
    """Where everything lives on the host, derived from settings."""

    config_dir: str
    systemd_dir: str

    @property
    def homeserver(self) -> str:
        return f"{self.config_dir}/homeserver.yaml"

    @property
    def conf_d(self) -> str:
        return f"{self.config_dir}/conf.d"

    @property
    def shared_workers(self) -> str:
        return f"{self.conf_d}/workers.yaml"

    @property
    def workers_dir(self) -> str:
        return f"{self.config_dir}/workers"

    @property
    def log_config(self) -> str:
        return f"{self.config_dir}/log.yaml"

    @property
    def secrets_dir(self) -> str:
        return f"{self.config_dir}/secrets"

    @property
    def signing_key(self) -> str:
        return f"{self.secrets_dir}/signing.key"

    @property
    def secrets(self) -> Mapping[str, str]:
        """Secrets generated once on the host and referenced by ``*_path`` settings."""
        return {name: f"{self.secrets_dir}/{name}" for name in SECRET_NAMES}

    @property
    def pgpass(self) -> str:
        return f"{self.secrets_dir}/database.pgpass"

    @property
    def redis_password(self) -> str:
        return f"{self.secrets_dir}/redis.password"

    def worker_config(self, name: str) -> str:
        return f"{self.workers_dir}/{name}.yaml"

    def unit(self, unit: str) -> str:
        return f"{self.systemd_dir}/{unit}"

    def limits_dropin(self, unit: str) -> str:
        return f"{self.systemd_dir}/{unit}.d/{LIMITS_DROPIN}"

    @property
    def certbot_dropin(self) -> str:
        return f"{self.systemd_dir}/certbot.service.d/{CERTBOT_DROPIN}"


def paths_for(settings: Settings) -> Paths:
    return Paths(settings.config_dir, settings.systemd_dir)


@dataclass(frozen=True)
class DesiredFile:
    """One file as it must be on the host.

    Attributes:
        restarts: process names to restart when the file changes (``EVERY_PROCESS`` for all).
        unit_file: a systemd unit or drop-in; a change needs ``systemctl daemon-reload``.
        secret: never print its content (diffs and logs mask it).
        reloads: units to reload (not restart) when the file changes, e.g. nginx
            (``EVERY_PROCESS``: every Synapse process, e.g. the log config).
        check: a command that must pass with the new file in place before anything is reloaded
            or restarted; if it fails, the previous files are put back.
    """

    path: str
    content: bytes = field(repr=False)
    mode: int
    owner: str
    group: str
    restarts: frozenset[str] = frozenset()
    unit_file: bool = False
    secret: bool = False
    reloads: frozenset[str] = frozenset()
    check: str | None = None


NGINX_UNIT: Final = "nginx.service"
NGINX_CHECK: Final = "nginx -t -q"


@dataclass(frozen=True)
class DesiredState:
    """Everything the deploy owns on one host."""

    files: Mapping[str, DesiredFile]
    directories: tuple[Directory, ...]
    # Shell globs of files we own; a match that is not in ``files`` is stale and gets removed.
    owned_globs: tuple[str, ...]
    readiness: Readiness
    # Generated on the host once, never replaced: shared secrets and Synapse's signing key
    # (None: none, on a retired host).
    secrets: tuple[str, ...]
    signing_key: str | None
    # How the host checks Synapse configs before restarting (None: no check).
    synapse_check: SynapseCheck | None
    # Directories we write into but share: files there that are not ours are listed, never touched.
    shared_dirs: tuple[str, ...] = ()
    # How a restart drains processes out of nginx first (None: nginx routing is off).
    drain: DrainSpec | None = None


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pgpass"] = lambda v: str(v).replace("\\", "\\\\").replace(":", "\\:")
    return env


def render_template(name: str, **context: Any) -> str:
    return _environment().get_template(name).render(**context)


def nginx_config(
    plan: WorkerPlan,
    nginx: NginxSettings,
    tls: TlsServers | None = None,
    cluster: ClusterPlan | None = None,
) -> str:
    """The nginx ``conf.d`` file routing client and federation traffic for ``plan``.

    Args:
        plan: the worker plan of one machine (built from the same settings: its port check
            covered nginx's port), or a cluster's (``ClusterPlan.combined``).
        nginx: the checked nginx settings.
        tls: the public TLS servers (``deploys.core.tls``), or None for none.
        cluster: with several machines, the processes of the other machines are reached at
            their machine's private address (which their HTTP listeners bind).

    Returns:
        The file's content: maps, a log format, upstreams, the plain ``server`` and, with
        `tls`, the public HTTPS and port-80 servers with the same routing.
    """
    return render_template(
        "nginx/synapse-workers.conf.j2",
        routes=nginx_routes(plan, nginx, _peer_reach(cluster)),
        main_upstream=MAIN_UPSTREAM,
        upstream_header=UPSTREAM_HEADER,
        upstream_header_variable=UPSTREAM_HEADER_VARIABLE,
        log_format=LOG_FORMAT,
        tls=tls,
    )


def desired_state(
    settings: Settings, plan: WorkerPlan, cluster: ClusterPlan | None = None
) -> DesiredState:
    """The host's whole desired file set for ``plan``.

    Args:
        settings: validated settings.
        plan: the worker plan built from the same settings (a cluster host's view).
        cluster: the whole cluster when ``plan`` is one machine's view of it: the main host
            routes (nginx) and lists metrics targets for every machine's workers; a workers host
            (``plan.runs_main`` False) has no main unit and no nginx file, and reaches Redis and
            PostgreSQL left at loopback at the main host's private address.

    Returns:
        Files by path, the directories they live in, and the globs of files we own.
    """
    paths = paths_for(settings)
    settings = on_this_machine(settings, plan, cluster)
    context = {
        "settings": settings,
        "plan": plan,
        "paths": paths,
        "shared": plan.shared,
        "pgpass": paths.pgpass if settings.database.password else None,
        "redis_password": paths.redis_password if settings.redis.password else None,
    }
    files: dict[str, DesiredFile] = {}

    def add(
        path: str,
        content: str,
        mode: int = 0o640,
        owner: str = "root",
        group: str = settings.group,
        **kwargs: Any,
    ) -> None:
        files[path] = DesiredFile(path, content.encode(), mode, owner, group, **kwargs)

    everyone = frozenset({EVERY_PROCESS})
    add(paths.homeserver, _homeserver(settings, plan, paths), restarts=everyone)
    add(
        paths.shared_workers,
        render_template("synapse/workers.yaml.j2", **context),
        restarts=everyone,
    )
    # Every Synapse process re-reads its log config on SIGHUP (synapse/config/logger.py).
    add(paths.log_config, render_template("synapse/log.yaml.j2", **context), reloads=everyone)
    if settings.database.password:
        add(
            paths.pgpass,
            render_template("synapse/database.pgpass.j2", db=settings.database),
            mode=0o600,
            owner=settings.user,
            restarts=everyone,
            secret=True,
        )
    # Secrets the operator gives (the same on every machine) are written, not generated.
    cluster_secrets = settings.cluster
    given = {
        paths.secrets["replication"]: cluster_secrets.replication_secret,
        paths.secrets["macaroon"]: cluster_secrets.macaroon_secret_key,
        paths.secrets["form"]: cluster_secrets.form_secret,
        paths.signing_key: cluster_secrets.signing_key and cluster_secrets.signing_key + "\n",
        paths.redis_password: settings.redis.password,
    }
    for path, value in given.items():
        if value is not None:
            add(path, value, 0o600, settings.user, restarts=everyone, secret=True)
    for worker in plan.workers:
        add(
            paths.worker_config(worker.name),
            render_template("synapse/worker.yaml.j2", worker=worker, **context),
            restarts=frozenset({worker.name}),
        )
    _add_units(settings, plan, paths, add)
    drain = None
    routed = cluster.combined if cluster is not None and cluster.multi_machine else plan
    if settings.nginx.enabled and plan.runs_main:
        # nginx reads it at reload; `nginx -t` must pass first, or the old file is put back.
        nginx_file = nginx_config(routed, settings.nginx, tls_servers(settings), cluster)
        add(
            settings.nginx.config_path,
            nginx_file,
            mode=0o644,
            group="root",
            reloads=frozenset({NGINX_UNIT}),
            check=NGINX_CHECK,
        )
        drain = DrainSpec(
            path=settings.nginx.config_path,
            sha256=hashlib.sha256(nginx_file.encode()).hexdigest(),
            grace=settings.restarts.drain_seconds,
            unit=NGINX_UNIT,
            check=NGINX_CHECK,
        )
    if dropin := certbot_dropin(settings):
        # certbot's own timer renews: it must trust a private ACME server's CA as the deploy does.
        add(paths.certbot_dropin, dropin, mode=0o644, group="root", unit_file=True)
    file_sd = settings.metrics.file_sd_path
    if settings.metrics_enabled and file_sd and plan.runs_main:
        # Prometheus re-reads file_sd files itself: a change restarts and reloads nothing.
        targets = scrape_targets(*_metrics_reach(routed, cluster, settings.domain))
        add(file_sd, file_sd_json(targets), mode=0o644, group="root")
    synapse_check = None
    if settings.config_check:
        synapse_check = SynapseCheck(
            python=posixpath.join(settings.install.venv_path, "bin", "python"),
            homeserver=paths.homeserver,
            conf_d=paths.conf_d,
            workers_dir=paths.workers_dir,
        )
    # A host that no longer runs main (or nginx) removes their files like any stale file of ours.
    elsewhere = () if plan.runs_main else (paths.unit(MAIN_UNIT), settings.nginx.config_path)
    return DesiredState(
        files,
        _directories(settings, paths),
        # The file_sd file is removed once metrics are off.
        (*_owned_globs(paths), *([file_sd] if file_sd else []), *elsewhere),
        _readiness(settings, plan),
        tuple(p for p in paths.secrets.values() if p not in files),
        None if paths.signing_key in files else paths.signing_key,
        synapse_check,
        (paths.workers_dir, paths.conf_d),
        drain,
    )


def retired_state(settings: Settings) -> DesiredState:
    """A retired host's desired state: nothing of ours. Every file we write (main's and the
    workers' configs, units, drop-ins, the nginx and file_sd files, the secrets we were given)
    matches an owned path, so the stale cleanup removes it and the units are stopped and
    disabled. Kept: the data and media directories, and the secrets generated on the host other
    than the replication secret, with the signing key (on a host that was main, the
    homeserver's identity)."""
    paths = paths_for(settings)
    file_sd = settings.metrics.file_sd_path
    owned = (
        *_owned_globs(paths),
        *([file_sd] if file_sd else []),
        *(paths.unit(u) for u in (MAIN_UNIT, WORKER_UNIT_TEMPLATE, TARGET_UNIT)),
        paths.homeserver,
        paths.shared_workers,
        paths.log_config,
        paths.redis_password,
        paths.secrets["replication"],  # the cluster's network credential
        settings.nginx.config_path,
    )
    return DesiredState({}, (), owned, Readiness(0), (), None, None, (), None)


def health_ports(plan: WorkerPlan) -> dict[str, int]:
    """unit -> a port of its HTTP listeners (every http listener serves /health)."""
    return {unit: listener.port for unit, listener in _health_listeners(plan).items()}


def health_urls(plan: WorkerPlan) -> dict[str, str]:
    """unit -> ``http://ADDRESS:PORT/health`` on an address the listener binds (``0.0.0.0`` ->
    127.0.0.1, ``::`` -> ::1; an IPv6 literal in brackets)."""
    return {
        unit: f"http://{_url_host(connect_address(listener.bind_addresses))}:{listener.port}/health"
        for unit, listener in _health_listeners(plan).items()
    }


def _health_listeners(plan: WorkerPlan) -> dict[str, Listener]:
    listeners = {}
    for process in plan.processes:
        http = process.listener("http") or process.listener("replication")
        if http is not None:
            listeners[process.unit] = http
    return listeners


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _readiness(settings: Settings, plan: WorkerPlan) -> Readiness:
    if settings.readiness_timeout == 0:
        return Readiness(0)
    reachable = {}
    if plan.nginx is not None:
        reachable[NGINX_UNIT] = (connect_address(plan.nginx.bind_addresses), plan.nginx.port)
    redis = settings.redis
    return Readiness(
        timeout=settings.readiness_timeout,
        health=health_urls(plan),
        reachable=reachable,
        redis=RedisCheck(
            host=redis.host,
            port=redis.port,
            path=redis.path,
            channel=settings.domain,
            subscribers=len(plan.processes) + plan.peers,
            password_path=paths_for(settings).redis_password if redis.password else None,
        ),
    )


def _homeserver(settings: Settings, plan: WorkerPlan, paths: Paths) -> str:
    extension = ""
    if settings.configuration_extension:
        extension = yaml.safe_dump(
            dict(settings.configuration_extension), default_flow_style=False, sort_keys=True
        ).rstrip("\n")
    return render_template(
        "synapse/homeserver.yaml.j2",
        settings=settings,
        plan=plan,
        paths=paths,
        extension=extension,
        pgpass=paths.pgpass if settings.database.password else None,
    )


def _add_units(settings: Settings, plan: WorkerPlan, paths: Paths, add: Any) -> None:
    python = posixpath.join(settings.install.venv_path, "bin", "python")
    config_args = f"--config-path={paths.homeserver} --config-path={paths.conf_d}/"
    writable = " ".join(
        dict.fromkeys((settings.data_dir, settings.media_store_path, paths.secrets_dir))
    )
    unit_context = {
        "settings": settings,
        "paths": paths,
        "python": python,
        "config_args": config_args,
        "writable_paths": writable,
    }
    worker_names = frozenset(w.name for w in plan.workers)
    units = (
        *([(MAIN_UNIT, frozenset({MAIN}))] if plan.runs_main else []),
        (WORKER_UNIT_TEMPLATE, worker_names),
        (TARGET_UNIT, frozenset()),
    )
    for unit, restarts in units:
        add(
            paths.unit(unit),
            render_template(f"systemd/{unit}.j2", **unit_context),
            mode=0o644,
            group="root",
            restarts=restarts,
            unit_file=True,
        )
    limited: list[tuple[Process, Mapping[str, str]]] = []
    if settings.limits.main and plan.runs_main:
        limited.append((plan.main, settings.limits.main))
    for worker in plan.workers:
        limits = settings.limits.workers.get(worker.worker_type.key)  # type: ignore[union-attr]
        if limits:
            limited.append((worker, limits))
    for process, limits in limited:
        add(
            paths.limits_dropin(process.unit),
            render_template("systemd/resource-limits.conf.j2", subject=process.unit, limits=limits),
            mode=0o644,
            group="root",
            restarts=frozenset({process.name}),
            unit_file=True,
        )


def _directories(settings: Settings, paths: Paths) -> tuple[Directory, ...]:
    user, group = settings.user, settings.group
    return (
        Directory(paths.config_dir, 0o750, "root", group),
        Directory(paths.conf_d, 0o750, "root", group),
        Directory(paths.workers_dir, 0o750, "root", group),
        Directory(paths.secrets_dir, 0o700, user, group),
        Directory(settings.data_dir, 0o750, user, group),
        Directory(settings.media_store_path, 0o750, user, group),
    )


def _owned_globs(paths: Paths) -> tuple[str, ...]:
    return (
        f"{paths.workers_dir}/*.yaml",
        paths.pgpass,
        paths.limits_dropin("matrix-synapse.service"),
        paths.limits_dropin("matrix-synapse-worker@*.service"),
        paths.certbot_dropin,
    )


def on_this_machine(settings: Settings, plan: WorkerPlan, cluster: ClusterPlan | None) -> Settings:
    """``settings`` as this machine uses them: on a workers host, Redis and PostgreSQL left at
    loopback are the main host's, reached at its private address."""
    if cluster is None or plan.runs_main:
        return settings
    main_address = cluster.private_addresses[cluster.main_host]
    if main_address is None:  # a multi-machine cluster has one (the cluster plan checked it)
        return settings
    redis, database = settings.redis, settings.database
    if redis.path is None and _is_loopback(redis.host):
        redis = dataclasses.replace(redis, host=main_address)
    if _is_loopback(database.host):
        database = dataclasses.replace(database, host=main_address)
    return dataclasses.replace(settings, redis=redis, database=database)


def _peer_reach(cluster: ClusterPlan | None) -> Any:
    """How nginx on the main host reaches a process: on its own machine at an address the
    listener binds, on another machine of the cluster at that machine's private address."""
    if cluster is None or not cluster.multi_machine:
        return None

    def reach(process: Process) -> str:
        address = cluster.private_addresses[process.machine]
        if process.machine == cluster.main_host or address is None:
            http = process.listener("http")
            assert http is not None
            return connect_address(http.bind_addresses)
        return address

    return reach


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _metrics_reach(plan: WorkerPlan, cluster: ClusterPlan | None, domain: str) -> tuple[Any, ...]:
    """``scrape_targets``' arguments for the main host's file: every process of the cluster that
    a Prometheus on the main host can reach: its own at an address their listener binds, the
    other machines' at their private address where their metrics listener binds it (or every
    address); a metrics listener bound to loopback on another machine is left out."""
    if cluster is None or not cluster.multi_machine:
        return plan.processes, domain

    def reachable(process: Process) -> bool:
        listener = process.listener("metrics")
        if listener is None or process.machine == cluster.main_host:
            return True
        address = cluster.private_addresses[process.machine]
        return any(
            a == address or ipaddress.ip_address(a).is_unspecified for a in listener.bind_addresses
        )

    def reach(process: Process, listener: Listener) -> str:
        if process.machine == cluster.main_host:
            return connect_address(listener.bind_addresses)
        address = cluster.private_addresses[process.machine]
        assert address is not None
        return address

    return tuple(p for p in plan.processes if reachable(p)), domain, reach


def redis_server_config(settings: Settings, cluster: ClusterPlan) -> str | None:
    """The main host's Redis settings for a cluster of several machines (``bind`` and
    ``requirepass``), or None when Redis is not this host's (a Unix socket or another host) or
    the cluster has one machine. A ``-`` before the private address: Redis starts without it if
    the address is missing (the workers hosts then fail their readiness, naming Redis), rather
    than failing to start for the main host too."""
    redis = settings.redis
    address = cluster.private_addresses.get(cluster.main_host)
    if not cluster.multi_machine or redis.path or not _is_loopback(redis.host) or not address:
        return None
    return render_template(
        "redis/pyinfra-synapse.conf.j2", address=address, password=redis.password
    )
