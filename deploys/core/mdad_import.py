"""Turn a matrix-docker-ansible-deploy (MDAD) ``vars.yml`` into this deploy's group_data. Pure.

Every top-level key of the input ends up in exactly one of two places: carried over (it sets one
or more settings here, named after their source) or not carried over, with why. Nothing is
evaluated: a value that is a Jinja template (``{{ ... }}``) or an Ansible Vault blob stays behind,
named with its expression (a secret's never shown). The worker-plan keys have MDAD's names here,
so they carry over as they are; a few Synapse options MDAD exposes as variables become keys of
``matrix_synapse_configuration_extension``.

``load_vars`` reads the YAML, ``import_vars`` maps it, ``render_group_data`` writes the Python and
``check`` runs the result through ``parse_settings`` and ``build_plan``, as a deploy would.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from deploys.core.plan import build_plan
from deploys.core.secret_keys import looks_secret
from deploys.core.settings import SettingsError, load_defaults, parse_settings
from deploys.core.settings.extension import (
    GENERATED_SECRET_KEYS,
    MANAGED_HOMESERVER_KEYS,
    may_hold_a_secret,
)
from deploys.core.settings.homeserver import LOG_LEVELS
from deploys.core.settings.worker_list import ENABLED_LIST_KEY, ENTRY_FIELDS
from deploys.core.settings.workers import port_start_keys
from deploys.core.worker_types import PRESETS, STREAMS, WORKER_TYPES

HIDDEN: Final = "<hidden>"
EXTENSION_KEY: Final = "matrix_synapse_configuration_extension"
MDAD_EXTENSION_YAML: Final = "matrix_synapse_configuration_extension_yaml"
COUNT_KEYS: Final = tuple(t.count_key for t in WORKER_TYPES) + tuple(s.count_key for s in STREAMS)
PORT_KEYS: Final = tuple(port_start_keys())
# MDAD's names for its own PostgreSQL, newest first (the role was renamed twice).
POSTGRES_ENABLED_KEYS: Final = (
    "postgres_enabled",
    "devture_postgres_enabled",
    "matrix_postgres_enabled",
)
POSTGRES_PASSWORD_KEYS: Final = (
    "postgres_connection_password",
    "devture_postgres_connection_password",
    "matrix_postgres_connection_password",
)
# Hostnames of MDAD's own containers on its docker network: nothing answers them on a plain host.
CONTAINER_HOSTS: Final = frozenset(
    {"matrix-postgres", "postgres", "matrix-redis", "matrix-valkey", "matrix-keydb", "valkey"}
)
LOCAL_DATABASE_HOST: Final = "127.0.0.1"
# A Synapse max_upload_size that nginx's client_max_body_size also reads the same.
NGINX_SIZE_RE: Final = re.compile(r"^[0-9]+[kKmMgG]?$")

# Same name here, and the Python type a literal value must have (matrix_domain, the workers'
# switch, preset, counts and list and the database keys have their own rules below).
DIRECT: Final[Mapping[str, type | tuple[type, ...]]] = {
    "matrix_synapse_report_stats": bool,
    "matrix_synapse_enable_registration": bool,
    "matrix_synapse_trusted_key_servers": list,
    "matrix_synapse_metrics_enabled": bool,
    "matrix_synapse_metrics_port": int,
    "matrix_synapse_replication_http_port": int,
    "matrix_synapse_database_port": int,
    "matrix_synapse_database_user": str,
    "matrix_synapse_database_cp_min": int,
    "matrix_synapse_redis_port": int,
    "matrix_synapse_redis_dbid": int,
    **dict.fromkeys(PORT_KEYS, int),
}
# MDAD variables that are one top-level homeserver.yaml key each: (key, value -> its value).
EXTENSION_VARS: Final[Mapping[str, tuple[str, type | tuple[type, ...], Callable[[Any], Any]]]] = {
    "matrix_synapse_max_upload_size_mb": ("max_upload_size", int, lambda v: f"{v}M"),
    "matrix_synapse_allow_guest_access": ("allow_guest_access", bool, lambda v: v),
    "matrix_synapse_presence_enabled": ("presence", bool, lambda v: {"enabled": v}),
    "matrix_synapse_admin_contact": ("admin_contact", str, lambda v: v),
    "matrix_synapse_enable_registration_without_verification": (
        "enable_registration_without_verification",
        bool,
        lambda v: v,
    ),
    "matrix_synapse_registration_requires_token": (
        "registration_requires_token",
        bool,
        lambda v: v,
    ),
    "matrix_synapse_auto_join_rooms": ("auto_join_rooms", list, lambda v: v),
    "matrix_synapse_federation_domain_whitelist": (
        "federation_domain_whitelist",
        list,
        lambda v: v,
    ),
    "matrix_synapse_default_room_version": ("default_room_version", (str, int), str),
    "matrix_synapse_allow_public_rooms_over_federation": (
        "allow_public_rooms_over_federation",
        bool,
        lambda v: v,
    ),
    "matrix_synapse_allow_public_rooms_without_auth": (
        "allow_public_rooms_without_auth",
        bool,
        lambda v: v,
    ),
    "matrix_synapse_event_cache_size": ("event_cache_size", (str, int), lambda v: v),
    "matrix_synapse_url_preview_enabled": ("url_preview_enabled", bool, lambda v: v),
    "matrix_synapse_url_preview_ip_range_blacklist": (
        "url_preview_ip_range_blacklist",
        list,
        lambda v: v,
    ),
}

_OUR_STACK: Final = (
    "this deploy installs Synapse (with nginx, Redis and optionally PostgreSQL) only"
)
_CONTAINER: Final = (
    "container setting: this deploy runs Synapse from a virtualenv under systemd, not in containers"
)
_PROXY: Final = (
    "reverse-proxy setting (Traefik, container labels, the nginx companion): this deploy routes "
    "with its own nginx (matrix_synapse_nginx_*); put TLS in front of it"
)
# (predicate on the key, why it is not carried over), first match wins; see _fallback_reason.
_REASONS: Final[tuple[tuple[Callable[[str], bool], str], ...]] = (
    (
        lambda k: k in ("matrix_homeserver_implementation",),
        "this deploy runs only Synapse; nothing to set",
    ),
    (
        lambda k: (
            k == "matrix_homeserver_generic_secret_key"
            or k.removeprefix("matrix_synapse_") in GENERATED_SECRET_KEYS
        ),
        "a secret MDAD uses or derives others from; this deploy generates its own secrets on the "
        "host once (macaroon, form, registration, replication, signing key; 0600 under "
        "<config_dir>/secrets/) and never takes them inline",
    ),
    (
        lambda k: k in ("matrix_synapse_version",) or "image" in k or "docker" in k,
        "container image: this deploy installs the matrix-synapse it pins "
        "(matrix_synapse_version in group_data/all.py) from PyPI into a virtualenv",
    ),
    (lambda k: "traefik" in k or "_labels_" in k or "reverse_proxy" in k, _PROXY),
    (lambda k: "container" in k, _CONTAINER),
    (
        lambda k: k == "matrix_synapse_federation_enabled",
        "this deploy always serves federation; to federate with nobody, set "
        "federation_domain_whitelist: [] in matrix_synapse_configuration_extension",
    ),
    (
        lambda k: k == "matrix_synapse_workers_presets",
        "MDAD calls overriding the presets fragile and this deploy has no such setting: keep a "
        "preset and set the matrix_synapse_workers_*_count keys",
    ),
    (
        lambda k: k == "matrix_synapse_configuration_yaml" or k == "matrix_synapse_configuration",
        "replaces MDAD's whole homeserver.yaml template: move the settings you need into "
        "matrix_synapse_configuration_extension by hand",
    ),
    (
        lambda k: k.startswith("matrix_synapse_ext_") or k == "matrix_synapse_modules",
        "a Synapse module MDAD builds into its image: install it into the virtualenv yourself and "
        "configure it in matrix_synapse_configuration_extension (modules: ...)",
    ),
    (
        lambda k: k.startswith("matrix_synapse_workers_"),
        "no such worker setting here (see the matrix_synapse_workers_* keys in group_data/all.py)",
    ),
    (
        lambda k: k.startswith("matrix_synapse_redis_"),
        "this deploy uses Redis on the host without a password, always (workers need it)",
    ),
    (
        lambda k: k.startswith("matrix_synapse_database_"),
        "no such database setting here (see matrix_synapse_database_* in group_data/all.py)",
    ),
    (
        lambda k: k.endswith("_log_level"),
        "this deploy sets one log level for every logger (matrix_synapse_log_level)",
    ),
    (
        lambda k: k.endswith("_path") or k.startswith("matrix_base_"),
        "a path in MDAD's layout (/matrix/...): this deploy has its own paths "
        "(matrix_synapse_config_dir, _data_dir, _media_store_path); copy the data over yourself",
    ),
    (
        lambda k: k.startswith("matrix_synapse_"),
        "no equivalent setting here: if it is a homeserver.yaml option, set that Synapse key in "
        "matrix_synapse_configuration_extension",
    ),
    (
        lambda k: k.startswith(("postgres_", "devture_postgres_", "matrix_postgres_")),
        "setting of MDAD's own PostgreSQL container; with "
        "matrix_synapse_database_install_postgresql this deploy installs PostgreSQL itself "
        "(max_connections sized to the plan)",
    ),
    (
        lambda k: k.startswith(("ansible_", "become")),
        "Ansible connection setting: list the machine in a pyinfra inventory (inventories/)",
    ),
    (
        lambda k: k.startswith(("matrix_playbook_", "devture_systemd_", "matrix_server_fqn_")),
        "playbook-wide setting for MDAD's other services; " + _OUR_STACK,
    ),
)


_WORKERS_OFF: Final = (
    "MDAD runs no workers while matrix_synapse_workers_enabled is false (this deploy refuses "
    "worker settings that have no effect)"
)
_WORKERS_UNKNOWN: Final = (
    "depends on matrix_synapse_workers_enabled, which is not carried over (see it in this list)"
)


class ImportFailed(ValueError):
    """The input cannot be read: one line, naming the file and what is wrong, never a value."""


@dataclass(frozen=True)
class Vault:
    """An ``!vault`` value: encrypted, and never shown."""


@dataclass(frozen=True)
class Tagged:
    """A value with a YAML tag this tool does not read (``!something``)."""

    tag: str


class Unsafe(str):
    """An ``!unsafe`` string: Ansible takes it literally, so it is no template."""


@dataclass(frozen=True)
class Carried:
    """One setting of this deploy and the MDAD keys it comes from."""

    key: str
    value: Any
    sources: tuple[str, ...]
    note: str = ""
    secret: bool = False


@dataclass(frozen=True)
class NotCarried:
    """One MDAD key (or ``key[sub]``) left behind: its value as shown, and why."""

    key: str
    shown: str
    reason: str


@dataclass
class ImportResult:
    """What ``import_vars`` made of the input.

    Attributes:
        settings: this deploy's settings, in output order.
        not_carried: every input key (or part of one) left behind, with why.
        notes: what the operator must know that belongs to no single key.
    """

    settings: dict[str, Carried] = field(default_factory=dict)
    not_carried: list[NotCarried] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        return {k: c.value for k, c in self.settings.items()}

    def secret_keys(self) -> list[str]:
        return [k for k, c in self.settings.items() if c.secret]

    def secret_values(self) -> list[str]:
        found: list[str] = []
        for c in self.settings.values():
            if c.secret:
                found.extend(_strings(c.value))
        # Short strings (a flag, "M") are words of the messages too, not secrets worth masking.
        return [s for s in found if len(s) >= 4]


class _Loader(yaml.SafeLoader):
    """YAML as Ansible writes it: ``!vault`` and ``!unsafe`` read, other tags kept as markers."""


_Loader.add_constructor("!vault", lambda loader, node: Vault())
_Loader.add_constructor(
    "!unsafe",
    lambda loader, node: Unsafe(loader.construct_scalar(node)),  # type: ignore[arg-type]
)
_Loader.add_multi_constructor("!", lambda loader, suffix, node: Tagged("!" + suffix))


def load_vars(text: str, source: str) -> dict[str, Any]:
    """Parse a ``vars.yml``; refuse anything but a mapping of variables.

    Raises:
        ImportFailed: not YAML, or not a mapping (the message never quotes the file).
    """
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        # problem and position only: the snippet PyYAML adds may hold a secret.
        where = (
            f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
            if e.problem_mark
            else ""
        )
        raise ImportFailed(f"{source}: not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise ImportFailed(f"{source}: not valid YAML ({type(e).__name__})") from None
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ImportFailed(
            f"{source}: expected a mapping of variables (name: value) at the top level, "
            f"found {found}"
        )
    return data


def import_vars(variables: Mapping[Any, Any]) -> ImportResult:
    """Map MDAD variables to this deploy's settings; every input key is carried or listed."""
    return _Importer(variables).run()


class _Importer:
    def __init__(self, variables: Mapping[Any, Any]) -> None:
        self.vars = variables
        self.result = ImportResult()
        self.done: set[Any] = set()
        self.extension: dict[str, tuple[Any, str]] = {}  # homeserver.yaml key -> (value, source)

    # -- bookkeeping ---------------------------------------------------------------------------

    def carry(self, key: str, value: Any, *sources: str, note: str = "", secret: bool = False):
        self.result.settings[key] = Carried(key, value, tuple(sources), note, secret)
        self.done.update(sources)

    def leave(self, key: Any, reason: str, value: Any = None, *, shown: str | None = None) -> None:
        name = key if isinstance(key, str) else repr(key)
        if shown is None:
            shown = _show(name, value)
        self.result.not_carried.append(NotCarried(name, shown, reason))
        if not isinstance(key, str) or "[" not in key:  # a part of a key leaves the rest
            self.done.add(key)

    def literal(self, key: str, kind: type | tuple[type, ...]) -> tuple[bool, Any]:
        """(True, value) if ``key`` holds a literal of ``kind``; else it is left, with why."""
        value = self.vars[key]
        problem = _unreadable(value)
        if problem is None and not _is_kind(value, kind):
            problem = f"expected {_kind_name(kind)}, found {type(value).__name__}"
        if problem is not None:
            self.leave(key, problem, value)
            return False, None
        return True, value

    def has(self, key: str) -> bool:
        return key in self.vars and key not in self.done

    # -- the mapping ---------------------------------------------------------------------------

    def run(self) -> ImportResult:
        self.homeserver()
        self.workers()
        self.database()
        self.direct()
        self.extension_vars()
        self.extension_yaml()
        self.emit_extension()
        for key in self.vars:
            if key not in self.done:
                reason = _fallback_reason(key)
                if _has(self.vars[key], _is_template):
                    reason += "; and its value is a Jinja template, which only Ansible can evaluate"
                self.leave(key, reason, self.vars[key])
        order = {k: i for i, k in enumerate(self.vars)}
        self.result.not_carried.sort(key=lambda n: order.get(n.key.partition("[")[0], len(order)))
        return self.result

    def homeserver(self) -> None:
        if self.has("matrix_domain"):
            self.literal_direct("matrix_domain", str)
        domain = self.result.settings.get("matrix_domain")
        if domain is None:
            self.result.notes.append(
                "set matrix_domain (the part after ':' in user IDs): the input has no literal one"
            )
        if self.has("matrix_synapse_log_level"):
            ok, level = self.literal("matrix_synapse_log_level", str)
            if ok and level.upper() in LOG_LEVELS:
                self.carry("matrix_synapse_log_level", level.upper(), "matrix_synapse_log_level")
            elif ok:
                self.leave(
                    "matrix_synapse_log_level", "allowed here: " + ", ".join(LOG_LEVELS), level
                )
        # MDAD serves clients at https://<matrix_server_fqn_matrix>/ (matrix.<domain> by default);
        # Synapse's own default, https://<domain>/, would send clients elsewhere.
        if self.has("matrix_synapse_public_baseurl"):
            ok, url = self.literal("matrix_synapse_public_baseurl", str)
            if ok:
                url = url if url.endswith("/") else url + "/"
                self.carry("matrix_synapse_public_baseurl", url, "matrix_synapse_public_baseurl")
        elif self.has("matrix_server_fqn_matrix"):
            ok, fqn = self.literal("matrix_server_fqn_matrix", str)
            if ok:
                self.carry(
                    "matrix_synapse_public_baseurl",
                    f"https://{fqn}/",
                    "matrix_server_fqn_matrix",
                    note="MDAD's public_baseurl is https://<matrix_server_fqn_matrix>/",
                )
        elif domain is not None:
            self.carry(
                "matrix_synapse_public_baseurl",
                f"https://matrix.{domain.value}/",
                note="MDAD's default: https://matrix.<matrix_domain>/ (matrix_server_fqn_matrix)",
            )

    def literal_direct(self, key: str, kind: type | tuple[type, ...]) -> None:
        ok, value = self.literal(key, kind)
        if ok:
            self.carry(key, value, key)

    def workers(self) -> None:
        enabled: bool | None = False  # MDAD's default; None: the input's value is unreadable
        if self.has("matrix_synapse_workers_enabled"):
            ok, enabled = self.literal("matrix_synapse_workers_enabled", bool)
            if ok:
                self.carry(
                    "matrix_synapse_workers_enabled", enabled, "matrix_synapse_workers_enabled"
                )
            else:
                enabled = None
        if self.has("matrix_synapse_workers_preset"):
            ok, preset = self.literal("matrix_synapse_workers_preset", str)
            if ok and preset in PRESETS:
                self.carry("matrix_synapse_workers_preset", preset, "matrix_synapse_workers_preset")
            elif ok:
                why = (
                    "MDAD renamed this preset to specialized-workers and refuses the old name"
                    if preset == "room-workers"
                    else "no such preset"
                )
                self.leave(
                    "matrix_synapse_workers_preset",
                    f"{why}; allowed: " + ", ".join(PRESETS),
                    preset,
                )
        listed = self.enabled_list()
        for key in COUNT_KEYS:
            if not self.has(key):
                continue
            if enabled is None:
                self.leave(key, _WORKERS_UNKNOWN, self.vars[key])
            elif not enabled:
                self.leave(key, _WORKERS_OFF, self.vars[key])
            elif listed:
                self.leave(
                    key,
                    f"MDAD ignores every count when {ENABLED_LIST_KEY} is written by hand",
                    self.vars[key],
                )
            else:
                ok, count = self.literal(key, int)
                if ok and count >= 0:
                    self.carry(key, count, key)
                elif ok:
                    self.leave(key, "a count is a whole number from 0", count)
        if listed and not enabled:
            self.result.settings.pop(ENABLED_LIST_KEY)
            self.done.discard(ENABLED_LIST_KEY)
            reason = _WORKERS_UNKNOWN if enabled is None else _WORKERS_OFF
            self.leave(ENABLED_LIST_KEY, reason, self.vars[ENABLED_LIST_KEY])

    def enabled_list(self) -> bool:
        """Carry a hand-written worker list; True if one was carried."""
        if not self.has(ENABLED_LIST_KEY):
            return False
        ok, entries = self.literal(ENABLED_LIST_KEY, list)
        if not ok or not entries:
            if ok:
                self.carry(ENABLED_LIST_KEY, [], ENABLED_LIST_KEY)
            return False
        out = []
        dropped: set[str] = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                out.append(entry)  # parse_settings names it
                continue
            kept = {}
            for name, value in entry.items():
                # Every worker runs synapse.app.generic_worker here; MDAD's app names
                # ("generic_worker", "pusher", ...) are not Synapse module names.
                if name == "app":
                    dropped.add("app")
                elif name in ENTRY_FIELDS:
                    kept[name] = value
                else:
                    self.leave(
                        f"{ENABLED_LIST_KEY}[{index}].{name}",
                        "no such worker field here; allowed: "
                        + ", ".join(sorted(ENTRY_FIELDS - {"app"})),
                        value,
                    )
            out.append(kept)
        note = (
            "each entry's app dropped: every worker runs synapse.app.generic_worker here "
            "(Synapse accepts it for every type, media too)"
            if dropped
            else ""
        )
        self.carry(ENABLED_LIST_KEY, out, ENABLED_LIST_KEY, note=note)
        return True

    def database(self) -> None:
        managed_key = next((k for k in POSTGRES_ENABLED_KEYS if k in self.vars), None)
        managed = True  # MDAD runs its own PostgreSQL unless told not to
        if managed_key is not None:
            ok, managed = self.literal(managed_key, bool)
            if not ok:
                managed = False
        host_given = False
        if self.has("matrix_synapse_database_host"):
            ok, host = self.literal("matrix_synapse_database_host", str)
            if ok and host and host not in CONTAINER_HOSTS:
                self.carry("matrix_synapse_database_host", host, "matrix_synapse_database_host")
                host_given = host != LOCAL_DATABASE_HOST
            elif ok:
                self.leave(
                    "matrix_synapse_database_host",
                    "MDAD's own PostgreSQL container (empty or its docker name): nothing answers "
                    f"it on a plain host; this deploy uses {LOCAL_DATABASE_HOST} "
                    "(matrix_synapse_database_host)",
                    host,
                )
        if managed_key is not None and not managed and not host_given:
            self.result.notes.append(
                "postgres_enabled is false (an external PostgreSQL) but the input names no "
                "matrix_synapse_database_host: set it"
            )
        if self.has("matrix_synapse_database_database"):
            ok, name = self.literal("matrix_synapse_database_database", str)
            if ok:
                self.carry("matrix_synapse_database_name", name, "matrix_synapse_database_database")
        if self.has("matrix_synapse_database_cp_max"):
            ok, cp_max = self.literal("matrix_synapse_database_cp_max", int)
            if ok:
                note = (
                    "MDAD's pool size applies to every process; lower "
                    "matrix_synapse_database_workers_cp_max so many workers fit max_connections"
                )
                self.carry(
                    "matrix_synapse_database_main_cp_max", cp_max, "matrix_synapse_database_cp_max"
                )
                self.carry(
                    "matrix_synapse_database_workers_cp_max",
                    cp_max,
                    "matrix_synapse_database_cp_max",
                    note=note,
                )
        password, password_from = self.password(managed and not host_given)
        if password is not None:
            self.carry("matrix_synapse_database_password", password, password_from, secret=True)
        install = managed and not host_given
        if install and password is None:
            install = False
            self.result.notes.append(
                "MDAD runs PostgreSQL on this machine (postgres_enabled is not false), but the "
                "input holds no literal database password: to do the same here set "
                "matrix_synapse_database_install_postgresql = True and "
                "matrix_synapse_database_password"
            )
        if managed_key is not None or install:
            self.carry(
                "matrix_synapse_database_install_postgresql",
                install,
                *([managed_key] if managed_key else []),
                note=(
                    "MDAD runs its own PostgreSQL on this machine (postgres_enabled defaults to "
                    "true): this deploy installs it on the host, then restore your database dump"
                    if install
                    else (
                        "MDAD's own PostgreSQL, but the input holds no literal password for it "
                        "(see To do)"
                        if managed and not host_given
                        else ""
                    )
                ),
            )
        for key in POSTGRES_PASSWORD_KEYS:
            if self.has(key):
                self.leave(
                    key,
                    "password of MDAD's PostgreSQL superuser (matrix); this deploy connects "
                    "only as matrix_synapse_database_user (its password is set above)",
                    self.vars[key],
                )

    def password(self, managed: bool) -> tuple[str | None, str]:
        """The database password and the key it came from (a superuser's only for our install)."""
        candidates = ["matrix_synapse_database_password"]
        if managed:
            candidates += list(POSTGRES_PASSWORD_KEYS)
        for key in candidates:
            if not self.has(key):
                continue
            value = self.vars[key]
            if value in ("", None):
                self.leave(
                    key, "empty: MDAD derives it, or leaves authentication to the server", value
                )
                continue
            ok, value = self.literal(key, str)
            if ok and "\n" in value:
                self.leave(key, "a multi-line password; allowed here: a single line", value)
            elif ok:
                return value, key
        return None, ""

    def direct(self) -> None:
        for key, kind in DIRECT.items():
            if self.has(key):
                self.literal_direct(key, kind)
        if self.has("matrix_synapse_redis_host"):
            ok, host = self.literal("matrix_synapse_redis_host", str)
            if ok and host and host not in CONTAINER_HOSTS:
                self.carry("matrix_synapse_redis_host", host, "matrix_synapse_redis_host")
            elif ok:
                self.leave(
                    "matrix_synapse_redis_host",
                    "MDAD's own Redis/Valkey container: this deploy runs Redis on the host",
                    host,
                )

    def extension_vars(self) -> None:
        for var, (name, kind, convert) in EXTENSION_VARS.items():
            if not self.has(var):
                continue
            ok, value = self.literal(var, kind)
            if not ok:
                continue
            if (
                var == "matrix_synapse_url_preview_enabled"
                and value
                and "matrix_synapse_url_preview_ip_range_blacklist" not in self.vars
            ):
                self.leave(
                    var,
                    "Synapse needs url_preview_ip_range_blacklist with it, which MDAD fills in "
                    "from its own default list: set both in matrix_synapse_configuration_extension",
                    value,
                )
                continue
            self.extension[name] = (convert(value), var)
            self.done.add(var)

    def extension_yaml(self) -> None:
        for key in (MDAD_EXTENSION_YAML, EXTENSION_KEY):
            if not self.has(key):
                continue
            raw = self.vars[key]
            problem = _unreadable(raw, template_ok=key == MDAD_EXTENSION_YAML)
            if problem is not None:
                self.leave(key, problem, raw)
                continue
            if isinstance(raw, str):
                try:
                    parsed = yaml.load(raw, Loader=_Loader)  # a SafeLoader subclass
                except yaml.YAMLError as e:
                    why = "its YAML does not parse"
                    if "{{" in raw or "{%" in raw:
                        why += " (it holds Jinja, which only Ansible can evaluate)"
                    mark = getattr(e, "problem_mark", None)
                    where = f" (line {mark.line + 1} of its text)" if mark else ""
                    self.leave(key, f"{why}{where}", raw, shown=_show_yaml_text(raw))
                    continue
            else:
                parsed = raw
            if parsed is None:  # MDAD's default: comments only
                self.leave(key, "holds no settings (comments only): nothing to carry", raw)
                continue
            if not isinstance(parsed, dict):
                self.leave(key, "not a mapping of homeserver.yaml keys", raw)
                continue
            self.done.add(key)
            for name, value in parsed.items():
                self.extension_key(key, name, value)

    def extension_key(self, source: str, name: Any, value: Any) -> None:
        label = f"{source}[{name!r}]"
        if not isinstance(name, str):
            self.leave(label, "a homeserver.yaml key is a string", value)
        elif name in GENERATED_SECRET_KEYS:
            self.leave(
                label,
                f"this deploy generates this secret on the host once and sets "
                f"{GENERATED_SECRET_KEYS[name]}; it never takes it inline",
                value,
                shown=HIDDEN,
            )
        elif name in MANAGED_HOMESERVER_KEYS:
            self.leave(
                label,
                f"{name!r} is written by this deploy itself (from its own settings)",
                value,
            )
        elif (problem := _unreadable(value)) is not None:
            self.leave(label, problem, value)
        else:
            previous = self.extension.get(name)
            if previous is not None and previous[1] in EXTENSION_VARS:
                self.leave(
                    previous[1],
                    f"overridden by {source} (it sets {name!r} too, and wins in MDAD)",
                    self.vars[previous[1]],
                )
            self.extension[name] = (value, source)

    def emit_extension(self) -> None:
        if not self.extension:
            return
        value = {name: v for name, (v, _) in self.extension.items()}
        sources = tuple(dict.fromkeys(s for _, s in self.extension.values()))
        self.carry(
            EXTENSION_KEY,
            value,
            *sources,
            note=(
                "top-level keys replace Synapse's defaults as they are (MDAD merged nested "
                "mappings into its own template)"
            ),
            secret=any(may_hold_a_secret(k, v) for k, v in value.items()),
        )
        size = value.get("max_upload_size")
        size = str(size) if isinstance(size, int) and not isinstance(size, bool) else size
        if isinstance(size, str) and NGINX_SIZE_RE.match(size):
            self.carry(
                "matrix_synapse_nginx_client_max_body_size",
                size,
                self.extension_source("max_upload_size"),
                note="nginx must accept bodies as large as Synapse's max_upload_size",
            )

    def extension_source(self, name: str) -> str:
        return self.extension[name][1]


def _fallback_reason(key: Any) -> str:
    if not isinstance(key, str):
        return "not a variable name"
    for matches, reason in _REASONS:
        if matches(key):
            return reason
    prefix = key.split("_")[0] if not key.startswith("matrix_") else "_".join(key.split("_")[:2])
    return (
        f"not a Synapse setting of the playbook ({prefix}_*: another service's, or unknown to "
        f"this tool); {_OUR_STACK}"
    )


def _unreadable(value: Any, *, template_ok: bool = False) -> str | None:
    """Why ``value`` cannot be written as a literal here, or None."""
    if _has(value, lambda v: isinstance(v, Vault)):
        return (
            "encrypted with Ansible Vault (!vault): decrypt it (ansible-vault) and set it yourself"
        )
    tagged = _find(value, lambda v: isinstance(v, Tagged))
    if tagged is not None:
        return f"YAML tag {tagged.tag} is Ansible's; this tool reads only plain values"
    if not template_ok and _has(value, _is_template):
        return "a Jinja template: only Ansible can evaluate it"
    odd = _find(value, lambda v: not _plain_leaf(v))
    if odd is not None:
        return f"a {type(odd).__name__} value, which this tool cannot write as Python"
    return None


def _is_template(value: Any) -> bool:
    return (
        isinstance(value, str)
        and not isinstance(value, Unsafe)
        and ("{{" in value or "{%" in value)
    )


def _plain_leaf(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (str, int, bool, list, dict))


def _children(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        yield from value.keys()
        yield from value.values()
    elif isinstance(value, list):
        yield from value


def _find(value: Any, match: Callable[[Any], bool]) -> Any:
    if match(value):
        return value
    for child in _children(value):
        found = _find(child, match)
        if found is not None:
            return found
    return None


def _has(value: Any, match: Callable[[Any], bool]) -> bool:
    return _find(value, match) is not None


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [s for child in _children(value) for s in _strings(child)]


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "a whole number", str: "a string", list: "a list"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _show_yaml_text(text: str) -> str | None:
    """A YAML text that did not parse is shown only if no key in it looks like a credential."""
    names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*:", text)
    return HIDDEN if any(looks_secret(n) for n in names) else None


def _show(key: str, value: Any, limit: int = 200) -> str:
    """How a left-behind value is shown: a secret never, anything else as Python, shortened."""
    if _has(value, lambda v: isinstance(v, Vault)):
        return "!vault " + HIDDEN
    base = key.partition("[")[0]
    sub = key.partition("[")[2].strip("]'\"") if "[" in key else ""
    if looks_secret(base) or may_hold_a_secret(sub or base, value):
        return HIDDEN
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def render_group_data(result: ImportResult, source: str) -> str:
    """The group_data file: every carried setting, commented, then what was left behind."""
    out = _comment(
        f"group_data for pyinfra-synapse, imported from matrix-docker-ansible-deploy's {source}. "
        "Review it, then save it as group_data/<group>.py."
    )
    secrets = result.secret_keys()
    if secrets:
        out.append("#")
        out += _comment(
            f"SECRETS: this file holds {', '.join(secrets)} in clear text, as the input did. "
            "Keep it out of version control (or load them from a secret store)."
        )
    if result.notes:
        out += ["#", "# To do:"]
        for n in result.notes:
            out += _comment(f"- {n}", "#   ", "#     ")
    sections = (
        (
            "Homeserver",
            (
                "matrix_domain",
                "matrix_synapse_public_baseurl",
                "matrix_synapse_log_level",
                "matrix_synapse_report_stats",
                "matrix_synapse_enable_registration",
                "matrix_synapse_trusted_key_servers",
                "matrix_synapse_metrics_enabled",
                "matrix_synapse_metrics_port",
                "matrix_synapse_replication_http_port",
            ),
        ),
        ("Workers", None),
        ("PostgreSQL", "matrix_synapse_database_"),
        ("Redis", "matrix_synapse_redis_"),
        (
            "homeserver.yaml pass-through and nginx",
            (EXTENSION_KEY, "matrix_synapse_nginx_client_max_body_size"),
        ),
    )
    placed: set[str] = set()
    for title, which in sections:
        if which is None:
            keys = [k for k in result.settings if k.startswith("matrix_synapse_workers_")]
        elif isinstance(which, str):
            keys = [k for k in result.settings if k.startswith(which)]
        else:
            keys = [k for k in which if k in result.settings]
        if not keys:
            continue
        out += ["", f"# {title}"]
        for key in keys:
            out += _render_setting(result.settings[key])
            placed.add(key)
    rest = [k for k in result.settings if k not in placed]
    if rest:
        out += ["", "# Other"]
        for key in rest:
            out += _render_setting(result.settings[key])
    out += ["", f"# Not carried over ({len(result.not_carried)}), each with why:"]
    if not result.not_carried:
        out.append("#   (nothing: every key of the input is carried over above)")
    for n in result.not_carried:
        out.append(f"#   - {n.key} = {n.shown}")
        out += _comment(n.reason, "#       ")
    return "\n".join(out) + "\n"


def _render_setting(c: Carried) -> list[str]:
    lines = []
    origin = (
        "from " + ", ".join(c.sources)
        if c.sources and c.sources != (c.key,)
        else ("" if c.sources or c.note else "not in the input")
    )
    comment = "; ".join(x for x in (origin, c.note) if x)
    if comment:
        lines += _comment(comment)
    prefix = f"{c.key} = "
    lines.append(prefix + _python(c.value, len(prefix), 0))
    return lines


def _python(value: Any, start: int, indent: int) -> str:
    """``value`` as a Python literal: one line if it fits in 99 columns from ``start``, else one
    item per line, indented four more than ``indent``."""
    one = repr(value)
    if start + len(one) <= 99 or not isinstance(value, (list, dict)) or not value:
        return one
    inner = indent + 4
    if isinstance(value, list):
        items = [_python(v, inner, inner) for v in value]
        brackets = "[]"
    else:
        items = [f"{k!r}: " + _python(v, inner + len(repr(k)) + 2, inner) for k, v in value.items()]
        brackets = "{}"
    body = "".join(f"{' ' * inner}{item},\n" for item in items)
    return f"{brackets[0]}\n{body}{' ' * indent}{brackets[1]}"


def _comment(text: str, first: str = "# ", rest: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        width=99,
        initial_indent=first,
        subsequent_indent=first if rest is None else rest,
        break_on_hyphens=False,
        break_long_words=False,
    )


def secret_lines(text: str, result: ImportResult) -> dict[str, int]:
    """The line of ``text`` each secret setting is on (1-based)."""
    found = {}
    for number, line in enumerate(text.splitlines(), start=1):
        for key in result.secret_keys():
            if re.match(rf"^{re.escape(key)} = ", line):
                found[key] = number
    return found


def check(result: ImportResult) -> list[str]:
    """What this deploy would refuse in the result (settings, then the plan); [] if nothing.

    Secret values carried over are masked in the messages.
    """
    data = load_defaults()
    data.update(result.values())
    try:
        build_plan(parse_settings(data), "imported")
    except SettingsError as e:
        problems = list(e.problems)
    else:
        return []
    for secret in result.secret_values():
        problems = [p.replace(secret, HIDDEN).replace(repr(secret), HIDDEN) for p in problems]
    return problems
