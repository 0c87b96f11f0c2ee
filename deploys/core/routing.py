"""Route Synapse's HTTP traffic to the main process and the workers: nginx's worker routing.

Pure: no pyinfra imports. ``nginx_routes`` turns a worker plan into nginx's building blocks (maps,
upstreams, an ordered list of regex locations); ``render_nginx_config`` renders them into one
``conf.d`` file (``templates/nginx/synapse-workers.conf.j2``) holding the upstreams and one
``server`` for client and federation traffic. nginx tries regex locations in file order and the
first match wins; ``location /`` (main) takes everything else.

Order of the rules (each rule is a list from ``deploys/endpoints.py``):

1. main-only paths and single sign-on: main;
2. each stream's endpoints: its writer, or main when the stream has none (the write handlers
   fail with 500 anywhere else); the streams' GET-only rules send GET and HEAD to any generic
   worker (client readers when there are no generic workers);
3. media (before any federation rule, matrix-docker-ansible-deploy issue #3918), user directory;
4. sync, room pagination, room-scoped client and federation requests, client reads;
5. federation reads and inbound transactions last.

A rule goes to the first of its targets that has workers, else to main. Balancing
(``POOL_BALANCE``):

- room workers, and ``/rooms/<id>/messages`` wherever it goes: ``hash $synapse_room consistent``
  (the room id from the path; Synapse requires one process per room for pagination);
- sync, generic and federation-reader workers: ``hash $synapse_requester consistent``. The
  requester is the user part of a Synapse access token (``syt_<base64 localpart>_...``, from the
  ``Authorization: Bearer`` header or ``?access_token=``) so all of a user's devices sync on one
  worker; any other token (MAS, appservice) as a whole; for federation the ``origin`` of the
  ``X-Matrix`` signature, so one remote server's transactions reach one worker; else the client
  address. This needs no sub-request (matrix-docker-ansible-deploy asks /whoami through njs,
  which also covers MAS's opaque tokens: those hash per token, i.e. per device, here);
- client readers, media and the user directory: ``least_conn``; stream writers: round robin.

Adding a worker type with an existing routing class needs nothing here: its workers join that
class's upstream. A new routing class needs a ``POOL_BALANCE`` entry and its rules.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from deploys.core import endpoints as ep
from deploys.core.plan import Process, WorkerPlan, connect_address
from deploys.core.settings import SettingsError, problem
from deploys.core.worker_types import STREAMS, Routing

MAIN_UPSTREAM: Final = "synapse_main"
UPSTREAM_HEADER: Final = "X-Synapse-Upstream"  # names the upstream that served each response
UPSTREAM_HEADER_VARIABLE: Final = "$sent_http_x_synapse_upstream"  # the same, for the access log
LOG_FORMAT: Final = "synapse_workers"
# Methods that a GET-only rule ("GET anywhere") sends to the generic workers.
READ_METHODS: Final = ("GET", "HEAD")

ROOM_HASH: Final = "hash $synapse_room consistent"
REQUESTER_HASH: Final = "hash $synapse_requester consistent"
LEAST_CONN: Final = "least_conn"

# How each routing class balances over its workers (None: round robin).
POOL_BALANCE: Final[Mapping[Routing, str | None]] = MappingProxyType(
    {
        Routing.GENERIC: REQUESTER_HASH,
        Routing.ROOM: ROOM_HASH,
        Routing.SYNC: REQUESTER_HASH,
        Routing.CLIENT_READER: LEAST_CONN,
        Routing.FEDERATION_READER: REQUESTER_HASH,
        Routing.USER_DIRECTORY: LEAST_CONN,
        Routing.MEDIA: LEAST_CONN,
        Routing.STREAM: None,
    }
)

# Idle keepalive connections each nginx worker process keeps per upstream: two per server as
# matrix-docker-ansible-deploy does (its PR #3076 load test), at least this many.
KEEPALIVE_MIN: Final = 16
# Shared-memory zone per upstream (state shared by nginx's worker processes): a base plus room
# for each server's peer record.
ZONE_BASE_KB: Final = 64
ZONE_PER_SERVER_KB: Final = 1


_SERVER_NAME_RE: Final = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SIZE_RE: Final = re.compile(r"^[0-9]+[kKmMgG]?$")
_LOG_PATH_RE: Final = re.compile(r"^/[^\s;{}'\"$\\]*$")


def _is_ip(value: object) -> bool:
    try:
        ipaddress.ip_address(value)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _is_network(value: object) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _quote(value: str) -> str:
    """``value`` as an nginx double-quoted string (nginx reads ``\\\\`` and ``\\"`` back)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class NginxSettings:
    """The nginx settings (``matrix_synapse_nginx_*``).

    Attributes:
        listen_addresses: addresses the server listens on.
        listen_port: its port (plain HTTP; put TLS in front).
        server_names: ``server_name`` values; empty answers any Host.
        trusted_proxies: addresses or CIDRs of proxies in front of nginx whose
            ``X-Forwarded-For`` (and ``X-Forwarded-Proto``) nginx believes.
        client_max_body_size: largest request body (media uploads), nginx syntax.
        access_log: access log path, or None for none.
    """

    listen_addresses: tuple[str, ...] = ("127.0.0.1",)
    listen_port: int = 8088
    server_names: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    client_max_body_size: str = "50M"
    access_log: str | None = "/var/log/nginx/matrix-synapse-workers.access.log"

    @property
    def listen(self) -> tuple[str, ...]:
        return tuple(f"{_host(a)}:{self.listen_port}" for a in self.listen_addresses)

    @property
    def server_name(self) -> str:
        return " ".join(self.server_names) or "_"

    @property
    def access_log_directive(self) -> str:
        return f"{self.access_log} {LOG_FORMAT}" if self.access_log else "off"

    @property
    def forwarded_proto(self) -> str:
        return "$synapse_forwarded_proto" if self.trusted_proxies else "$scheme"

    def problems(self) -> list[str]:
        """What is wrong, one ``key = value: allowed`` line each (values go into nginx verbatim)."""
        port_ok = isinstance(self.listen_port, int) and 1 <= self.listen_port <= 65535
        log_ok = self.access_log is None or bool(_LOG_PATH_RE.match(str(self.access_log)))
        checks = (
            (
                "listen_addresses",
                list(self.listen_addresses),
                bool(self.listen_addresses) and all(map(_is_ip, self.listen_addresses)),
                "allowed: a non-empty list of IP addresses, e.g. ['127.0.0.1']",
            ),
            ("listen_port", self.listen_port, port_ok, "allowed: an integer from 1 to 65535"),
            (
                "server_names",
                list(self.server_names),
                all(_SERVER_NAME_RE.match(n) for n in self.server_names),
                "allowed: host names such as 'matrix.example.org' ('*.' prefix allowed); "
                "[] answers any Host",
            ),
            (
                "trusted_proxies",
                list(self.trusted_proxies),
                all(map(_is_network, self.trusted_proxies)),
                "allowed: a list of IP addresses or CIDRs, e.g. ['10.0.0.0/8']",
            ),
            (
                "client_max_body_size",
                self.client_max_body_size,
                bool(_SIZE_RE.match(str(self.client_max_body_size))),
                "allowed: a size such as '50M' (digits, then k, m or g)",
            ),
            (
                "access_log",
                self.access_log,
                log_ok,
                "allowed: None or an absolute path without spaces or ;{}'\"$\\",
            ),
        )
        return [
            problem(f"matrix_synapse_nginx_{name}", value, allowed)
            for name, value, ok, allowed in checks
            if not ok
        ]


# --- Rules ------------------------------------------------------------------------------------


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
        Rule("GET on any worker, writes on main", ep.GET_ANYWHERE, (), readers),
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


# --- What nginx gets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    address: str  # host:port
    process: str


@dataclass(frozen=True)
class Upstream:
    name: str
    servers: tuple[Server, ...]
    balance: str | None

    @property
    def keepalive(self) -> int:
        return max(KEEPALIVE_MIN, 2 * len(self.servers))

    @property
    def zone_size(self) -> str:
        return f"{ZONE_BASE_KB + ZONE_PER_SERVER_KB * len(self.servers)}k"


@dataclass(frozen=True)
class Location:
    """One ``location ~ regex``: to ``upstream``, or GET/HEAD to ``get_upstream`` if set.

    ``variable`` names the ``map $request_method`` that picks between them (a method split).
    """

    regex: str
    upstream: str
    get_upstream: str | None
    rule: str
    variable: str | None = None

    @property
    def quoted_regex(self) -> str:
        return _quote(self.regex)

    @property
    def target(self) -> str:
        """What ``proxy_pass http://`` and the upstream header name."""
        return f"${self.variable}" if self.variable else self.upstream


@dataclass(frozen=True)
class LocationGroup:
    rule: str
    locations: tuple[Location, ...]


@dataclass(frozen=True)
class NginxMap:
    """``map <source> $<variable> { <key> <value>; ... default <default>; }`` (keys quoted)."""

    source: str
    variable: str
    entries: tuple[tuple[str, str], ...]
    default: str


@dataclass(frozen=True)
class NginxRoutes:
    maps: tuple[NginxMap, ...]
    upstreams: tuple[Upstream, ...]
    groups: tuple[LocationGroup, ...]

    @property
    def locations(self) -> tuple[Location, ...]:
        return tuple(loc for g in self.groups for loc in g.locations)

    def upstream(self, name: str) -> Upstream:
        return next(u for u in self.upstreams if u.name == name)


# The hash keys. nginx evaluates a map only when an upstream's hash uses its variable.
_KEY_MAPS: Final = (
    NginxMap(
        "$uri",
        "synapse_room",
        (
            (_quote(r"~^/_matrix/client/.*?/rooms/([^/]+)"), "$1"),
            (_quote(r"~^/_matrix/client/.*?/(join|knock)/([^/]+)"), "$2"),
            (_quote(r"~^/_matrix/federation/v\d+/[^/]+/([^/]+)"), "$1"),
        ),
        "$uri",
    ),
    NginxMap(
        "$arg_access_token",
        "synapse_query_requester",
        ((_quote(r"~^syt_([A-Za-z0-9+/%]+?)_"), "$1"),),
        "$arg_access_token",
    ),
    NginxMap(
        "$http_authorization",
        "synapse_token_requester",
        (
            (_quote(r"~*^Bearer\s+syt_([A-Za-z0-9+/]+)_"), "$1"),
            (_quote(r"~*^Bearer\s+(\S+)"), "$1"),
            (_quote(r'~*^X-Matrix\s.*\borigin="?([^",]+)'), "$1"),
        ),
        "$synapse_query_requester",
    ),
    NginxMap(
        "$synapse_token_requester",
        "synapse_requester",
        (('""', "$remote_addr"),),
        "$synapse_token_requester",
    ),
)
_FORWARDED_PROTO_MAP: Final = NginxMap(
    "$http_x_forwarded_proto",
    "synapse_forwarded_proto",
    (('""', "$scheme"),),
    "$http_x_forwarded_proto",
)


def nginx_routes(plan: WorkerPlan, nginx: NginxSettings | None = None) -> NginxRoutes:
    """nginx's maps, upstreams and ordered locations for ``plan``.

    Args:
        plan: the worker plan of one machine.
        nginx: nginx settings (only whether proxies are trusted changes the maps).

    Returns:
        The routes; with no workers that serve HTTP, no locations (``location /`` is main).
    """
    nginx = nginx or NginxSettings()
    pools = _pools(plan)
    upstreams: dict[str, Upstream] = {
        MAIN_UPSTREAM: Upstream(MAIN_UPSTREAM, (_server(plan.main),), None)
    }

    def resolve(targets: Iterable[Target]) -> str | None:
        for target in targets:
            servers = pools.get((target.routing, target.stream))
            if not servers:
                continue
            balance = POOL_BALANCE[target.routing]
            name = _pool_name(target)
            if target.by_room and balance != ROOM_HASH:
                name, balance = f"{name}_by_room", ROOM_HASH
            upstreams.setdefault(name, Upstream(name, servers, balance))
            return name
        return None

    seen: set[str] = set()
    locations: list[Location] = []
    splits: dict[tuple[str, str], str] = {}  # (upstream, get_upstream) -> map variable
    for rule in rules():
        upstream = resolve(rule.targets) or MAIN_UPSTREAM
        get_upstream = resolve(rule.get_targets)
        variable = None
        if get_upstream == upstream:
            get_upstream = None
        elif get_upstream is not None:
            # Short: nginx's variables hash refuses names much longer than 40 characters.
            name = f"synapse_reads_{_short(upstream)}_{len(splits)}"
            variable = splits.setdefault((upstream, get_upstream), name)
        for regex in rule.regexes:
            if regex not in seen:  # a repeated regex could never match: nginx took the first
                seen.add(regex)
                locations.append(Location(regex, upstream, get_upstream, rule.name, variable))
    # Trailing locations to main change nothing: `location /` sends their paths to main too.
    while locations and locations[-1].upstream == MAIN_UPSTREAM and not locations[-1].get_upstream:
        locations.pop()
    used = {MAIN_UPSTREAM} | {u for loc in locations for u in (loc.upstream, loc.get_upstream) if u}
    maps = list(_KEY_MAPS)
    if nginx.trusted_proxies:
        maps.append(_FORWARDED_PROTO_MAP)
    for (upstream, get_upstream), variable in splits.items():
        if any(loc.variable == variable for loc in locations):
            choices = tuple((method, get_upstream) for method in READ_METHODS)
            maps.append(NginxMap("$request_method", variable, choices, upstream))
    return NginxRoutes(
        tuple(maps), tuple(u for u in upstreams.values() if u.name in used), _group(locations)
    )


def render_nginx_config(plan: WorkerPlan, nginx: NginxSettings) -> str:
    """The nginx ``conf.d`` file routing client and federation traffic for ``plan``.

    Args:
        plan: the worker plan of one machine.
        nginx: the nginx settings.

    Returns:
        The file's content: maps, a log format, upstreams and one ``server``.

    Raises:
        SettingsError: a bad nginx setting, or nginx would listen where a Synapse process does.
    """
    _check(plan, nginx)
    # Imported here: deploys.core.render will import this module to add the file to the host's set.
    from deploys.core.render import render_template

    return render_template(
        "nginx/synapse-workers.conf.j2",
        routes=nginx_routes(plan, nginx),
        nginx=nginx,
        main_upstream=MAIN_UPSTREAM,
        upstream_header=UPSTREAM_HEADER,
        upstream_header_variable=UPSTREAM_HEADER_VARIABLE,
        log_format=LOG_FORMAT,
    )


# --- Helpers ----------------------------------------------------------------------------------


def _pools(plan: WorkerPlan) -> dict[tuple[Routing, str | None], tuple[Server, ...]]:
    pools: dict[tuple[Routing, str | None], list[Server]] = {}
    for worker in plan.workers:
        t = worker.worker_type
        if t is None or t.routing is Routing.NONE or worker.listener("http") is None:
            continue
        stream = worker.stream.name if t.routing is Routing.STREAM and worker.stream else None
        pools.setdefault((t.routing, stream), []).append(_server(worker))
    return {key: tuple(servers) for key, servers in pools.items()}


def _pool_name(target: Target) -> str:
    if target.routing is Routing.STREAM:
        return f"synapse_stream_{target.stream}"
    return f"synapse_{target.routing.value}"


def _short(upstream: str) -> str:
    return upstream.removeprefix("synapse_").removeprefix("stream_")


def _server(process: Process) -> Server:
    http = process.listener("http")
    assert http is not None, process.name
    return Server(f"{_host(connect_address(http.bind_addresses))}:{http.port}", process.name)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _group(locations: list[Location]) -> tuple[LocationGroup, ...]:
    by_rule = itertools.groupby(locations, key=lambda loc: loc.rule)
    return tuple(LocationGroup(rule, tuple(locs)) for rule, locs in by_rule)


def _check(plan: WorkerPlan, nginx: NginxSettings) -> None:
    problems = nginx.problems()
    if problems:
        raise SettingsError(problems)
    ours = [ipaddress.ip_address(a) for a in nginx.listen_addresses]
    for process in plan.processes:
        for listener in process.listeners:
            if listener.port != nginx.listen_port:
                continue
            theirs = [ipaddress.ip_address(a) for a in listener.bind_addresses]
            if any(a == b or a.is_unspecified or b.is_unspecified for a in ours for b in theirs):
                problems.append(
                    problem(
                        "matrix_synapse_nginx_listen_port",
                        nginx.listen_port,
                        f"{process.name} ({listener.purpose}, from {listener.source}) "
                        "listens there; "
                        "allowed: a port no Synapse listener uses",
                    )
                )
    if problems:
        raise SettingsError(problems)
