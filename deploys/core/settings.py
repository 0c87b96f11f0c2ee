"""Read host data once into a typed, immutable ``Settings`` object, or fail naming the bad key.

Pure: no pyinfra imports. The defaults live in ``group_data/all.py`` only; ``load_defaults()`` reads
that file so tests and tools see exactly what pyinfra sees.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import runpy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from deploys.core.worker_types import (
    ACCEPTED_WORKER_APPS,
    PRESETS,
    SPECIALISED_TYPE_KEYS,
    STREAM_WRITER,
    STREAM_WRITER_PORT_KEYS,
    STREAMS,
    STREAMS_BY_NAME,
    WORKER_TYPES,
    WORKER_TYPES_BY_MDAD_TYPE,
)

if TYPE_CHECKING:
    from deploys.core.routing import NginxSettings

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULTS_FILE: Final = REPO_ROOT / "group_data" / "all.py"

# A Synapse instance name that is also a systemd instance name and a file name.
WORKER_NAME_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
RESERVED_WORKER_NAMES: Final = frozenset({"main", "master"})
# A server name: a DNS name or IP literal, optionally with a port (Matrix spec, "Server name").
SERVER_NAME_RE: Final = re.compile(
    r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,253}[A-Za-z0-9])?)(:[0-9]{1,5})?$"
)
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# systemd [Service] directives accepted as resource limits (systemd.resource-control, .exec).
RESOURCE_LIMIT_DIRECTIVES: Final = frozenset(
    {
        "CPUQuota",
        "CPUWeight",
        "MemoryHigh",
        "MemoryMax",
        "MemorySwapMax",
        "TasksMax",
        "IOWeight",
        "LimitNOFILE",
        "Nice",
    }
)
# homeserver.yaml keys this deploy writes itself; the pass-through extension may not replace them.
MANAGED_HOMESERVER_KEYS: Final = frozenset(
    {
        "server_name",
        "public_baseurl",
        "report_stats",
        "enable_registration",
        "listeners",
        "database",
        "redis",
        "log_config",
        "signing_key_path",
        "media_store_path",
        "macaroon_secret_key_path",
        "form_secret_path",
        "registration_shared_secret_path",
        "worker_replication_secret",
        "worker_replication_secret_path",
        "instance_map",
        "stream_writers",
        "federation_sender_instances",
        "pusher_instances",
        "run_background_tasks_on",
        "notify_appservices_from_worker",
        "update_user_directory_from_worker",
        "media_instance_running_background_jobs",
        "enable_media_repo",
        "enable_metrics",
        "worker_app",
        "worker_name",
        "worker_listeners",
        "send_federation",
        "start_pushers",
        "notify_appservices",
        "update_user_directory",
        "daemonize",
        "pid_file",
        "trusted_key_servers",
        "suppress_key_server_warning",
    }
)
# Secrets this deploy generates once on the host (render.SECRET_NAMES, files under secrets/) and
# points Synapse at with the managed ``*_path`` key. Inline in the pass-through they would land in
# homeserver.yaml and in every --diff; refused by name, their value never echoed.
GENERATED_SECRET_KEYS: Final = MappingProxyType(
    {
        "macaroon_secret_key": "macaroon_secret_key_path",
        "form_secret": "form_secret_path",
        "registration_shared_secret": "registration_shared_secret_path",
        "worker_replication_secret": "worker_replication_secret_path",
    }
)
HIDDEN: Final = "<hidden>"
# A key whose value is never echoed in a problem (it may hold a credential).
SECRET_LOOKING_KEY_RE: Final = re.compile(r"secret|passw|token|private|credential|_key$", re.I)
# Account names that are root: Synapse must run unprivileged. uid 0 is "root" on Debian ("toor"
# is the BSD spare root account); gid 0 is "root" on Debian, "wheel" on the BSDs.
ACCOUNT_NAME_RE: Final = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ROOT_USERS: Final = frozenset({"root", "toor"})
ROOT_GROUPS: Final = frozenset({"root", "wheel"})
# Worker counts. One type's workers take consecutive ports from its port-range start, and the
# default starts are 1,000 apart (group_data/all.py), so 1,000 of a type never reach the next
# block; stream writers of every stream share one block, so they count together. A machine runs
# at most 1,024 workers: 1,000 of one type on top of the largest preset's 18 others stays
# allowed, while the deploy is measured and checked against the real Synapse at 1,000 and a
# Synapse process needs ~120 MiB (1,000 workers: ~120 GiB). Larger counts are typos; refusing
# them here keeps the controller from planning billions of workers.
MAX_WORKERS_PER_TYPE: Final = 1000
MAX_WORKERS_PER_MACHINE: Final = 1024
ENABLED_LIST_KEY: Final = "matrix_synapse_workers_enabled_list"
MDAD_ENTRY_KEYS: Final = frozenset(
    {
        "id",
        "name",
        "type",
        "app",
        "port",
        "metrics_port",
        "webserving",
        "replication_port",
        "stream_writer_stream",
    }
)


class SettingsError(ValueError):
    """Bad settings. Each problem names the key, the value and what is allowed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "invalid pyinfra-synapse settings:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


def problem(key: str, value: Any, allowed: str) -> str:
    """Format one problem: ``key = value: allowed``."""
    return f"{key} = {value!r}: {allowed}"


@dataclass(frozen=True)
class DatabaseSettings:
    host: str
    port: int
    name: str
    user: str
    password: str | None = field(repr=False)
    install_postgresql: bool
    cp_min: int
    main_cp_max: int
    workers_cp_max: int


@dataclass(frozen=True)
class RedisSettings:
    host: str
    port: int
    path: str | None
    dbid: int


@dataclass(frozen=True)
class WorkerEntry:
    """One hand-written worker (``matrix_synapse_workers_enabled_list``)."""

    name: str
    type_key: str
    stream: str | None
    http_port: int | None
    replication_port: int | None
    metrics_port: int | None


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool
    preset: str
    # Effective counts after applying the preset; empty when disabled or hand-written.
    counts: Mapping[str, int]
    stream_counts: Mapping[str, int]
    # Port-range starts by their setting key.
    port_starts: Mapping[str, int]
    enabled_list: tuple[WorkerEntry, ...] | None
    # Resource limits by worker type key.
    resource_limits: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class Settings:
    domain: str
    public_baseurl: str | None
    report_stats: bool
    enable_registration: bool
    log_level: str
    trusted_key_servers: tuple[Mapping[str, Any], ...]
    configuration_extension: Mapping[str, Any]
    install_enabled: bool
    version: str
    venv_path: str
    user: str
    group: str
    config_dir: str
    data_dir: str
    media_store_path: str
    systemd_dir: str
    deploy_lock_timeout: int
    http_port: int
    replication_port: int
    metrics_enabled: bool
    metrics_port: int
    bind_addresses: tuple[str, ...]
    replication_bind_addresses: tuple[str, ...]
    metrics_bind_addresses: tuple[str, ...]
    x_forwarded: bool
    config_check: bool
    readiness_timeout: int
    database: DatabaseSettings
    redis: RedisSettings
    main_resource_limits: Mapping[str, str]
    workers: WorkerSettings
    nginx_enabled: bool
    nginx_config_path: str
    nginx: NginxSettings


def load_defaults() -> dict[str, Any]:
    """The defaults exactly as pyinfra loads them from ``group_data/all.py``."""
    namespace = runpy.run_path(str(DEFAULTS_FILE))
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


class _Reader:
    """Reads and checks keys one by one, collecting every problem instead of stopping at one."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []
        self.read: set[str] = set()

    def raw(self, key: str) -> Any:
        self.read.add(key)
        if key not in self.data:
            self.problems.append(
                f"{key} is missing: define it (group_data/all.py holds every default)"
            )
        return self.data.get(key)

    def check(self, key: str, ok: Callable[[Any], bool], allowed: str, default: Any) -> Any:
        value = self.raw(key)
        if key in self.data and not ok(value):
            self.problems.append(problem(key, value, allowed))
            return default
        return value if key in self.data else default

    def boolean(self, key: str) -> bool:
        return self.check(key, lambda v: isinstance(v, bool), "allowed: true or false", False)

    def integer(self, key: str, lo: int, hi: int, default: int = 0) -> int:
        return self.check(
            key,
            lambda v: _is_int(v) and lo <= v <= hi,
            f"allowed: an integer from {lo} to {hi}",
            default,
        )

    def port(self, key: str) -> int:
        return self.integer(key, 1024, 65535, 1024)

    def count(self, key: str) -> int | None:
        # The type only: how many is a count rule (_check_count_rules).
        return self.check(
            key,
            lambda v: v is None or (_is_int(v) and v >= 0),
            f"allowed: a whole number from 0 to {MAX_WORKERS_PER_TYPE}, or None "
            "for the preset's count",
            None,
        )

    def text(
        self, key: str, pattern: re.Pattern[str] | None = None, allowed: str = "", default: str = ""
    ) -> str:
        def ok(v: Any) -> bool:
            return isinstance(v, str) and v != "" and (pattern is None or bool(pattern.match(v)))

        return self.check(key, ok, allowed or "allowed: a non-empty string", default)

    def optional_str(self, key: str) -> str | None:
        return self.check(
            key,
            lambda v: v is None or (isinstance(v, str) and v != ""),
            "allowed: a non-empty string or None",
            None,
        )

    def path(self, key: str) -> str:
        return self.check(key, _is_abs_path, "allowed: an absolute path", "/")

    def addresses(self, key: str) -> tuple[str, ...]:
        value = self.check(
            key,
            _is_address_list,
            "allowed: a non-empty list of IP addresses, e.g. ['127.0.0.1']",
            [],
        )
        return tuple(value)

    def limits(self, key: str, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            self.problems.append(problem(key, value, "allowed: a mapping of systemd directives"))
            return {}
        bad = sorted(k for k in value if k not in RESOURCE_LIMIT_DIRECTIVES)
        if bad:
            allowed = ", ".join(sorted(RESOURCE_LIMIT_DIRECTIVES))
            self.problems.append(
                problem(key, value, f"unknown directive {bad[0]!r}; allowed: {allowed}")
            )
        for directive, setting in value.items():
            if (
                not isinstance(setting, (str, int))
                or isinstance(setting, bool)
                or "\n" in str(setting)
            ):
                self.problems.append(
                    problem(
                        f"{key}[{directive!r}]",
                        setting,
                        "allowed: a single-line string or an integer",
                    )
                )
        return {str(k): str(v) for k, v in value.items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_abs_path(value: Any) -> bool:
    return (
        isinstance(value, str) and value.startswith("/") and "\n" not in value and " " not in value
    )


def _is_address_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    try:
        for address in value:
            ipaddress.ip_address(address)
    except (TypeError, ValueError):
        return False
    return True


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Turn pyinfra host data into ``Settings``.

    Args:
        data: host data (``host.data.dict()``): group_data/all.py defaults plus overrides.

    Returns:
        The validated, immutable settings.

    Raises:
        SettingsError: naming every bad key, its value and what is allowed.
    """
    r = _Reader(data)
    settings = Settings(
        domain=r.text(
            "matrix_domain",
            SERVER_NAME_RE,
            "allowed: the homeserver name, a DNS name such as 'example.org'",
            "invalid.invalid",
        ),
        public_baseurl=r.check(
            "matrix_synapse_public_baseurl",
            lambda v: v is None or (isinstance(v, str) and re.match(r"^https?://[^\s]+/$", v)),
            "allowed: None or an http(s) URL ending in '/'",
            None,
        ),
        report_stats=r.boolean("matrix_synapse_report_stats"),
        enable_registration=r.boolean("matrix_synapse_enable_registration"),
        log_level=r.check(
            "matrix_synapse_log_level",
            lambda v: v in LOG_LEVELS,
            "allowed: " + ", ".join(LOG_LEVELS),
            "INFO",
        ),
        trusted_key_servers=tuple(
            r.check(
                "matrix_synapse_trusted_key_servers",
                lambda v: (
                    isinstance(v, (list, tuple))
                    and all(
                        isinstance(s, Mapping) and isinstance(s.get("server_name"), str) for s in v
                    )
                ),
                "allowed: a list of mappings with a server_name, "
                "e.g. [{'server_name': 'matrix.org'}]",
                [],
            )
        ),
        configuration_extension=_read_extension(r),
        install_enabled=r.boolean("matrix_synapse_install_enabled"),
        version=r.text(
            "matrix_synapse_version",
            re.compile(r"^[0-9][0-9A-Za-z.+-]*$"),
            "allowed: a PyPI version of matrix-synapse such as '1.163.2'",
        ),
        venv_path=r.path("matrix_synapse_venv_path"),
        user=_read_account(r, "matrix_synapse_user", "user", ROOT_USERS),
        group=_read_account(r, "matrix_synapse_group", "group", ROOT_GROUPS),
        config_dir=r.path("matrix_synapse_config_dir"),
        data_dir=r.path("matrix_synapse_data_dir"),
        media_store_path=r.path("matrix_synapse_media_store_path"),
        systemd_dir=r.path("matrix_synapse_systemd_dir"),
        deploy_lock_timeout=r.integer("matrix_synapse_deploy_lock_timeout", 0, 86400, 600),
        http_port=r.port("matrix_synapse_http_port"),
        replication_port=r.port("matrix_synapse_replication_http_port"),
        metrics_enabled=r.boolean("matrix_synapse_metrics_enabled"),
        metrics_port=r.port("matrix_synapse_metrics_port"),
        bind_addresses=r.addresses("matrix_synapse_bind_addresses"),
        replication_bind_addresses=r.addresses("matrix_synapse_replication_bind_addresses"),
        metrics_bind_addresses=r.addresses("matrix_synapse_metrics_bind_addresses"),
        x_forwarded=r.boolean("matrix_synapse_x_forwarded"),
        config_check=r.boolean("matrix_synapse_config_check"),
        readiness_timeout=r.integer("matrix_synapse_readiness_timeout", 0, 3600, 300),
        database=_read_database(r),
        redis=RedisSettings(
            host=r.text("matrix_synapse_redis_host"),
            port=r.integer("matrix_synapse_redis_port", 1, 65535),
            path=r.check(
                "matrix_synapse_redis_path",
                lambda v: v is None or _is_abs_path(v),
                "allowed: None or an absolute unix socket path",
                None,
            ),
            dbid=r.integer("matrix_synapse_redis_dbid", 0, 15),
        ),
        main_resource_limits=MappingProxyType(
            r.limits(
                "matrix_synapse_systemd_resource_limits",
                r.raw("matrix_synapse_systemd_resource_limits") or {},
            )
        ),
        workers=_read_workers(r),
        nginx_enabled=r.boolean("matrix_synapse_nginx_enabled"),
        nginx_config_path=r.path("matrix_synapse_nginx_config_path"),
        nginx=_read_nginx(r),
    )
    _check_unknown_keys(data, r)
    if r.problems:
        raise SettingsError(r.problems)
    return settings


def _read_nginx(r: _Reader) -> NginxSettings:
    from deploys.core.routing import NginxSettings  # routing imports this module

    def strings(key: str) -> tuple[str, ...]:
        value = r.check(
            key,
            lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
            "allowed: a list of strings",
            [],
        )
        return tuple(value)

    nginx = NginxSettings(
        listen_addresses=strings("matrix_synapse_nginx_listen_addresses"),
        listen_port=r.integer("matrix_synapse_nginx_listen_port", 1, 65535, 8088),
        server_names=strings("matrix_synapse_nginx_server_names"),
        trusted_proxies=strings("matrix_synapse_nginx_trusted_proxies"),
        client_max_body_size=r.text("matrix_synapse_nginx_client_max_body_size", default="50M"),
        access_log=r.check(
            "matrix_synapse_nginx_access_log",
            lambda v: v is None or _is_abs_path(v),
            "allowed: None or an absolute path",
            None,
        ),
    )
    r.problems.extend(nginx.problems())
    return nginx


def _read_account(r: _Reader, key: str, kind: str, root_names: frozenset[str]) -> str:
    name = r.text(key, ACCOUNT_NAME_RE, f"allowed: a system {kind} name")
    if name in root_names:
        r.problems.append(
            problem(
                key,
                name,
                f"Synapse must not run as root (uid/gid 0): it would "
                f"own the whole machine; allowed: an unprivileged "
                f"system {kind} such as 'matrix-synapse'",
            )
        )
    return name


def _may_hold_a_secret(key: str, value: Any) -> bool:
    """True if ``key`` or any key nested in ``value`` looks like it names a credential."""
    if key in GENERATED_SECRET_KEYS or SECRET_LOOKING_KEY_RE.search(key):
        return True
    if isinstance(value, Mapping):
        return any(_may_hold_a_secret(str(k), v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_may_hold_a_secret("", v) for v in value)
    return False


def _read_extension(r: _Reader) -> Mapping[str, Any]:
    key = "matrix_synapse_configuration_extension"
    value = r.raw(key)
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        shown = HIDDEN if _may_hold_a_secret(key, value) else repr(value)
        r.problems.append(f"{key} = {shown}: allowed: a mapping of homeserver.yaml keys")
        return MappingProxyType({})
    for name in sorted(value):
        shown = HIDDEN if _may_hold_a_secret(name, value[name]) else repr(value[name])
        if name in GENERATED_SECRET_KEYS:
            r.problems.append(
                f"{key}[{name!r}] = {shown}: this deploy generates this secret on the host once "
                f"and sets {GENERATED_SECRET_KEYS[name]}; an inline value would be written to "
                "homeserver.yaml and shown in diffs; allowed: any homeserver.yaml key except "
                f"those the deploy writes itself ({', '.join(sorted(GENERATED_SECRET_KEYS))}, "
                "listeners, database, ...)"
            )
        elif name in MANAGED_HOMESERVER_KEYS:
            r.problems.append(
                f"{key}[{name!r}] = {shown}: {name!r} is managed by this deploy; "
                "allowed: keys it does not write itself"
            )
    return MappingProxyType(dict(value))


def _read_database(r: _Reader) -> DatabaseSettings:
    cp_min = r.integer("matrix_synapse_database_cp_min", 1, 100, 1)
    main_cp_max = r.integer("matrix_synapse_database_main_cp_max", 1, 100, 10)
    workers_cp_max = r.integer("matrix_synapse_database_workers_cp_max", 1, 100, 3)
    for key, value in (
        ("matrix_synapse_database_main_cp_max", main_cp_max),
        ("matrix_synapse_database_workers_cp_max", workers_cp_max),
    ):
        if value < cp_min:
            r.problems.append(
                problem(key, value, f"allowed: at least matrix_synapse_database_cp_min ({cp_min})")
            )
    password = r.check(
        "matrix_synapse_database_password",
        lambda v: v is None or (isinstance(v, str) and v and "\n" not in v),
        "allowed: None or a single-line string",
        None,
    )
    host = r.text("matrix_synapse_database_host")
    install_postgresql = r.boolean("matrix_synapse_database_install_postgresql")
    if install_postgresql and host not in ("127.0.0.1", "::1", "localhost"):
        r.problems.append(
            problem(
                "matrix_synapse_database_host",
                host,
                "matrix_synapse_database_install_postgresql installs PostgreSQL "
                "on this host; allowed: 127.0.0.1, ::1 or localhost",
            )
        )
    if install_postgresql and not password:
        r.problems.append(
            problem(
                "matrix_synapse_database_password",
                password,
                "matrix_synapse_database_install_postgresql creates the role "
                "with this password; allowed: a non-empty string",
            )
        )
    return DatabaseSettings(
        host=host,
        port=r.integer("matrix_synapse_database_port", 1, 65535, 5432),
        name=r.text("matrix_synapse_database_name"),
        user=r.text("matrix_synapse_database_user"),
        password=password,
        install_postgresql=install_postgresql,
        cp_min=cp_min,
        main_cp_max=main_cp_max,
        workers_cp_max=workers_cp_max,
    )


def _read_workers(r: _Reader) -> WorkerSettings:
    enabled = r.boolean("matrix_synapse_workers_enabled")
    preset = r.check(
        "matrix_synapse_workers_preset",
        lambda v: v in PRESETS,
        "allowed: " + ", ".join(PRESETS),
        "one-of-each",
    )
    explicit = {t.key: r.count(t.count_key) for t in WORKER_TYPES}
    explicit_streams = {s.name: r.count(s.count_key) for s in STREAMS}
    port_starts = {k: r.port(k) for k in _port_start_keys()}
    enabled_list = _read_enabled_list(r)
    limits = _read_worker_limits(r)

    set_counts = [t.count_key for t in WORKER_TYPES if explicit[t.key] is not None]
    set_counts += [s.count_key for s in STREAMS if explicit_streams[s.name] is not None]
    if enabled_list and set_counts:
        r.problems.append(
            problem(
                set_counts[0],
                r.data.get(set_counts[0]),
                "has no effect because matrix_synapse_workers_enabled_list is "
                "set (a hand-written list replaces every count); allowed: None",
            )
        )
    if not enabled:
        if set_counts or enabled_list:
            key = set_counts[0] if set_counts else "matrix_synapse_workers_enabled_list"
            r.problems.append(
                problem(
                    key,
                    r.data.get(key),
                    "has no effect because matrix_synapse_workers_enabled is "
                    "false; allowed: None (or enable workers)",
                )
            )
        return WorkerSettings(
            False,
            preset,
            MappingProxyType({}),
            MappingProxyType({}),
            MappingProxyType(port_starts),
            None,
            MappingProxyType(limits),
        )
    if enabled_list:
        _check_entry_names(r, enabled_list)
        counts = {t.key: sum(e.type_key == t.key for e in enabled_list) for t in WORKER_TYPES}
        streams = {s.name: sum(e.stream == s.name for e in enabled_list) for s in STREAMS}
        _check_count_rules(r, counts, streams, listed=True)
        return WorkerSettings(
            True,
            preset,
            MappingProxyType({}),
            MappingProxyType({}),
            MappingProxyType(port_starts),
            tuple(enabled_list),
            MappingProxyType(limits),
        )

    preset_counts, preset_streams = PRESETS.get(preset, PRESETS["one-of-each"])
    counts = {k: v if v is not None else preset_counts.get(k, 0) for k, v in explicit.items()}
    streams = {
        k: v if v is not None else preset_streams.get(k, 0) for k, v in explicit_streams.items()
    }
    _check_count_rules(r, counts, streams, listed=False)
    return WorkerSettings(
        True,
        preset,
        MappingProxyType(counts),
        MappingProxyType(streams),
        MappingProxyType(port_starts),
        None,
        MappingProxyType(limits),
    )


def _port_start_keys() -> list[str]:
    keys: list[str] = []
    for t in WORKER_TYPES:
        if t.http_port_key:
            keys.append(t.http_port_key)
        keys.append(t.metrics_port_key)
    keys.extend(STREAM_WRITER_PORT_KEYS.values())
    return keys


def _check_count_rules(
    r: _Reader, counts: Mapping[str, int], streams: Mapping[str, int], listed: bool
) -> None:
    """Every rule on how many workers of each kind, for counts and for a hand-written list.

    Counts name each count key (after the preset filled in the unset ones); a hand-written list
    (``listed``) is named as a whole, with how many of each kind it holds.
    """

    def where(count_key: str, n: int, kind: str) -> tuple[str, Any]:
        return (ENABLED_LIST_KEY, f"{n} {kind}") if listed else (count_key, n)

    for t in WORKER_TYPES:
        n = counts[t.key]
        limit = 1 if t.single else MAX_WORKERS_PER_TYPE
        if n > limit:
            why = (
                "Synapse runs this duty on one worker"
                if t.single
                else f"a type's workers use one {MAX_WORKERS_PER_TYPE}-port block"
            )
            r.problems.append(
                problem(
                    *where(t.count_key, n, f"{t.mdad_type} workers"),
                    f"{why}; allowed: " + ("0 or 1" if t.single else f"0 to {limit}"),
                )
            )
    for s in STREAMS:
        if s.single and streams[s.name] > 1:
            r.problems.append(
                problem(
                    *where(s.count_key, streams[s.name], f"{s.name} stream writers"),
                    f"Synapse accepts one {s.name} writer; allowed: 0 or 1",
                )
            )
    writers = sum(streams.values())
    if writers > MAX_WORKERS_PER_TYPE:
        largest = max(STREAMS, key=lambda s: streams[s.name])
        r.problems.append(
            problem(
                *where(largest.count_key, streams[largest.name], f"{largest.name} stream writers"),
                f"{writers} stream writers in all, and the writers of every stream use one "
                f"{MAX_WORKERS_PER_TYPE}-port block; allowed: at most {MAX_WORKERS_PER_TYPE} "
                "stream writers in all",
            )
        )
    generic = WORKER_TYPES_BY_MDAD_TYPE["generic_worker"]
    specialised = [k for k in SPECIALISED_TYPE_KEYS if counts[k] > 0]
    if counts[generic.key] > 0 and specialised:
        r.problems.append(
            problem(
                *where(
                    generic.count_key,
                    counts[generic.key],
                    f"generic_worker and {specialised[0]} workers",
                ),
                f"generic workers cannot be mixed with {specialised[0]} workers (room, sync, "
                "client_reader, federation_reader); allowed: 0 generic workers when specialised "
                "workers are enabled",
            )
        )
    total = sum(counts.values()) + writers
    if total > MAX_WORKERS_PER_MACHINE:
        if listed:
            r.problems.append(_too_many_workers(ENABLED_LIST_KEY, f"{total} workers", total))
        else:
            key, n = max(((t.count_key, counts[t.key]) for t in WORKER_TYPES), key=lambda kv: kv[1])
            if writers > n:
                largest = max(STREAMS, key=lambda s: streams[s.name])
                key, n = largest.count_key, streams[largest.name]
            r.problems.append(_too_many_workers(key, n, total))


def _too_many_workers(key: str, value: Any, total: int) -> str:
    return problem(
        key,
        value,
        f"this machine would run {total} workers; allowed: at most "
        f"{MAX_WORKERS_PER_MACHINE} workers per machine in all (see "
        "group_data/all.py)",
    )


def _read_enabled_list(r: _Reader) -> list[WorkerEntry]:
    key = ENABLED_LIST_KEY
    value = r.raw(key)
    if value is None or value == []:
        return []
    if not isinstance(value, (list, tuple)):
        r.problems.append(problem(key, value, "allowed: a list of worker mappings"))
        return []
    if len(value) > MAX_WORKERS_PER_MACHINE:  # before reading a million entries one by one
        r.problems.append(_too_many_workers(key, f"{len(value)} workers", len(value)))
        return []
    entries = []
    for index, item in enumerate(value):
        entry = _read_entry(r, f"{key}[{index}]", item)
        if entry is not None:
            entries.append(entry)
    return entries


def _read_entry(r: _Reader, key: str, item: Any) -> WorkerEntry | None:
    if not isinstance(item, Mapping):
        r.problems.append(problem(key, item, "allowed: a mapping with at least name and type"))
        return None
    unknown = sorted(set(item) - MDAD_ENTRY_KEYS)
    if unknown:
        r.problems.append(
            problem(
                f"{key}.{unknown[0]}",
                item[unknown[0]],
                "unknown field; allowed: " + ", ".join(sorted(MDAD_ENTRY_KEYS)),
            )
        )
    start = len(r.problems)
    name = item.get("name")
    if not isinstance(name, str) or not _valid_worker_name(name):
        r.problems.append(problem(f"{key}.name", name, _WORKER_NAME_ALLOWED))
    worker_type = WORKER_TYPES_BY_MDAD_TYPE.get(item.get("type"))  # type: ignore[arg-type]
    if worker_type is None:
        r.problems.append(
            problem(
                f"{key}.type", item.get("type"), "allowed: " + ", ".join(WORKER_TYPES_BY_MDAD_TYPE)
            )
        )
    if "app" in item and item["app"] not in ACCEPTED_WORKER_APPS:
        r.problems.append(
            problem(
                f"{key}.app", item["app"], "allowed: " + ", ".join(sorted(ACCEPTED_WORKER_APPS))
            )
        )
    stream = item.get("stream_writer_stream")
    if worker_type is STREAM_WRITER and stream not in STREAMS_BY_NAME:
        r.problems.append(
            problem(f"{key}.stream_writer_stream", stream, "allowed: " + ", ".join(STREAMS_BY_NAME))
        )
    if worker_type is not None and worker_type is not STREAM_WRITER and stream is not None:
        r.problems.append(
            problem(f"{key}.stream_writer_stream", stream, "allowed: only on type stream_writer")
        )
    ports = {}
    for field_name in ("port", "replication_port", "metrics_port"):
        port = item.get(field_name)
        if port is not None and port != 0 and not (_is_int(port) and 1024 <= port <= 65535):
            r.problems.append(
                problem(f"{key}.{field_name}", port, "allowed: an integer from 1024 to 65535")
            )
        ports[field_name] = port or None
    if len(r.problems) > start or worker_type is None:
        return None
    return WorkerEntry(
        name,
        worker_type.key,
        stream if worker_type is STREAM_WRITER else None,
        ports["port"],
        ports["replication_port"],
        ports["metrics_port"],
    )


def _check_entry_names(r: _Reader, entries: Sequence[WorkerEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            r.problems.append(
                problem(
                    ENABLED_LIST_KEY, entry.name, "duplicate worker name; allowed: unique names"
                )
            )
        seen.add(entry.name)


def _read_worker_limits(r: _Reader) -> dict[str, Mapping[str, str]]:
    key = "matrix_synapse_workers_systemd_resource_limits"
    value = r.raw(key) or {}
    if not isinstance(value, Mapping):
        r.problems.append(problem(key, value, "allowed: a mapping of worker type to directives"))
        return {}
    limits = {}
    for type_key, directives in value.items():
        if type_key not in {t.key for t in (*WORKER_TYPES, STREAM_WRITER)}:
            allowed = ", ".join(t.key for t in (*WORKER_TYPES, STREAM_WRITER))
            r.problems.append(
                problem(
                    f"{key}[{type_key!r}]", directives, f"unknown worker type; allowed: {allowed}"
                )
            )
            continue
        limits[type_key] = MappingProxyType(r.limits(f"{key}[{type_key!r}]", directives))
    return limits


_WORKER_NAME_ALLOWED: Final = (
    "allowed: lowercase letters, digits and '-' ([a-z0-9-], at most 64, not starting or ending "
    "with '-'; 'main' and 'master' are reserved)"
)


def _valid_worker_name(name: str) -> bool:
    return bool(WORKER_NAME_RE.match(name)) and name not in RESERVED_WORKER_NAMES


def _check_unknown_keys(data: Mapping[str, Any], r: _Reader) -> None:
    known = sorted(r.read)
    for key in sorted(data):
        if key.startswith("matrix_synapse_") and key not in r.read:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see group_data/all.py for every key"
            r.problems.append(problem(key, data[key], f"unknown setting; {hint}"))
