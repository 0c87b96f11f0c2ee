"""Render every file the deploy writes on a host: path -> content, mode, owner, and what a change
to it means for the services. Pure: templates in, bytes out; nothing here talks to a host.

The only module that renders templates (``templates/``): the plan (``deploys.core.plan``) and the
nginx routes (``deploys.core.routing``) are models; this module turns them into files.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

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
from deploys.core.tls import TlsServers, tls_servers
from deploys.host.manifest import Directory, DrainSpec, Readiness, RedisCheck, SynapseCheck
from deploys.host.units import EVERY_PROCESS, MAIN, TARGET_UNIT

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

    def worker_config(self, name: str) -> str:
        return f"{self.workers_dir}/{name}.yaml"

    def unit(self, unit: str) -> str:
        return f"{self.systemd_dir}/{unit}"

    def limits_dropin(self, unit: str) -> str:
        return f"{self.systemd_dir}/{unit}.d/{LIMITS_DROPIN}"


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
    # Generated on the host once, never replaced: shared secrets and Synapse's signing key.
    secrets: tuple[str, ...]
    signing_key: str
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


def nginx_config(plan: WorkerPlan, nginx: NginxSettings, tls: TlsServers | None = None) -> str:
    """The nginx ``conf.d`` file routing client and federation traffic for ``plan``.

    Args:
        plan: the worker plan of one machine (built from the same settings: its port check
            covered nginx's port).
        nginx: the checked nginx settings.
        tls: the public TLS servers (``deploys.core.tls``), or None for none.

    Returns:
        The file's content: maps, a log format, upstreams, the plain ``server`` and, with
        `tls`, the public HTTPS and port-80 servers with the same routing.
    """
    return render_template(
        "nginx/synapse-workers.conf.j2",
        routes=nginx_routes(plan, nginx),
        main_upstream=MAIN_UPSTREAM,
        upstream_header=UPSTREAM_HEADER,
        upstream_header_variable=UPSTREAM_HEADER_VARIABLE,
        log_format=LOG_FORMAT,
        tls=tls,
    )


def desired_state(settings: Settings, plan: WorkerPlan) -> DesiredState:
    """The host's whole desired file set for ``plan``.

    Args:
        settings: validated settings.
        plan: the worker plan built from the same settings.

    Returns:
        Files by path, the directories they live in, and the globs of files we own.
    """
    paths = paths_for(settings)
    context = {
        "settings": settings,
        "plan": plan,
        "paths": paths,
        "shared": plan.shared,
        "pgpass": paths.pgpass if settings.database.password else None,
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
    for worker in plan.workers:
        add(
            paths.worker_config(worker.name),
            render_template("synapse/worker.yaml.j2", worker=worker, **context),
            restarts=frozenset({worker.name}),
        )
    _add_units(settings, plan, paths, add)
    drain = None
    if settings.nginx.enabled:
        # nginx reads it at reload; `nginx -t` must pass first, or the old file is put back.
        nginx_file = nginx_config(plan, settings.nginx, tls_servers(settings))
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
    file_sd = settings.metrics.file_sd_path
    if settings.metrics_enabled and file_sd:
        # Prometheus re-reads file_sd files itself: a change restarts and reloads nothing.
        targets = scrape_targets(plan.processes, settings.domain)
        add(file_sd, file_sd_json(targets), mode=0o644, group="root")
    synapse_check = None
    if settings.config_check:
        synapse_check = SynapseCheck(
            python=posixpath.join(settings.install.venv_path, "bin", "python"),
            homeserver=paths.homeserver,
            conf_d=paths.conf_d,
            workers_dir=paths.workers_dir,
        )
    return DesiredState(
        files,
        _directories(settings, paths),
        (*_owned_globs(paths), *([file_sd] if file_sd else [])),  # removed once metrics are off
        _readiness(settings, plan),
        tuple(paths.secrets.values()),
        paths.signing_key,
        synapse_check,
        (paths.workers_dir, paths.conf_d),
        drain,
    )


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
            subscribers=len(plan.processes),
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
        ("matrix-synapse.service", frozenset({MAIN})),
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
    if settings.limits.main:
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
    )
