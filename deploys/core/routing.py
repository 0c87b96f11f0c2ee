"""Route Synapse's HTTP traffic to the main process and the workers: nginx's worker routing.

Pure: no pyinfra imports, no templates. ``nginx_routes`` turns a worker plan and the nginx settings
into nginx's building blocks (maps, upstreams, an ordered list of regex locations, the server's
directives); ``deploys.core.render`` renders them into one ``conf.d`` file
(``templates/nginx/synapse-workers.conf.j2``) holding the upstreams and one ``server`` for client
and federation traffic. The nginx settings and their checks live in
``deploys.core.settings.nginx``; the plan's port check covers nginx's port. nginx tries regex
locations in file order and the first match wins; ``location /`` (main) takes everything else.

Which endpoints go to which routing class, in which order, is ``deploys.core.routing_rules``.
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

Restarts (``RETRY``, ``UNAVAILABLE``, ``MAIN_FALLBACK``): a request whose server refuses the
connection, closes it before answering or times out is passed to another server of its upstream
(idempotent methods only once the request was sent: nginx never resends a POST); a server that
failed is skipped for ``FAIL_TIMEOUT_SECONDS``, then tried again. An upstream with one server
balances nothing, so it drops its hash and, where Synapse lets main serve the class
(``MAIN_FALLBACK``), gets main as a ``backup`` server. nginx refuses ``backup`` beside ``hash``,
so a sticky upstream with several servers keeps its hash and no backup: its other servers take a
restarting one's share (``consistent`` moves only that share). A request that finds no live
server gets 503 with ``Retry-After`` and a Matrix error body, never nginx's bare 502. Draining a
process for a restart marks its ``server`` lines ``down`` (``deploys.host.drain`` finds them by
their ``# <process>`` comment).

Adding a worker type with an existing routing class needs nothing here: its workers join that
class's upstream. A new routing class needs a ``POOL_BALANCE`` entry and its rules (in
``deploys.core.routing_rules``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from deploys.core.processes import Process, WorkerPlan, connect_address
from deploys.core.routing_rules import Target, rules
from deploys.core.settings import NginxSettings
from deploys.core.worker_types import Routing

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

# Whether main may serve a routing class's endpoints while none of the class's workers is live
# (Synapse 1.163; main's listener serves the client and federation resources).
MAIN_FALLBACK: Final[Mapping[Routing, bool]] = MappingProxyType(
    {
        # main registers every servlet a generic worker does
        Routing.GENERIC: True,
        # room-scoped client and federation requests: main serves them (it is a generic worker too)
        Routing.ROOM: True,
        # /sync and /events: main serves them; a user's sync cache there starts cold
        Routing.SYNC: True,
        # client reads: main serves them
        Routing.CLIENT_READER: True,
        # federation reads and inbound transactions: main's listener has the federation resource
        Routing.FEDERATION_READER: True,
        # search is a database read main serves; only updating the directory moved to the worker
        Routing.USER_DIRECTORY: True,
        # main runs with enable_media_repo: false when media workers exist: no media servlets
        Routing.MEDIA: False,
        # main refuses a stream's writes when a writer is configured (typing and push rules raise
        # in the servlet; to-device, receipts, thread subscriptions and quarantine fail the
        # store's "can write" assertion) or forwards them over replication to that same writer
        # (account data, presence, device lists): a fallback gains nothing over a prompt 503
        Routing.STREAM: False,
    }
)
# nginx allows ``backup`` servers only with round robin and ``least_conn``.
BACKUP_BALANCES: Final = (None, LEAST_CONN)

# One failure (a refused connection, a reset, a timeout) takes a server out for this long (nginx
# counts whole seconds: 1 to 2 s); then one request tries it again and moves on if it fails, so
# a restarted worker is back that soon. A drain's reload clears these marks at once.
MAX_FAILS: Final = 1
FAIL_TIMEOUT_SECONDS: Final = 1


@dataclass(frozen=True)
class Retry:
    """When nginx passes a request on to the next server of its upstream.

    Attributes:
        next_upstream: ``proxy_next_upstream``: errors and timeouts only. Not ``http_502`` /
            ``http_504``: Synapse answers those itself when a remote homeserver fails, which a
            retry elsewhere only repeats (and would count as this server failing). Never
            ``non_idempotent``: a POST that reached Synapse is not sent twice.
        tries: ``proxy_next_upstream_tries``: the first try, another server, then main (backup).
        timeout: ``proxy_next_upstream_timeout``: nginx's read timeout, so a long-poll ``/sync``
            (30 s) cut by its worker's stop is still retried, and nothing retries for ever.
        connect_timeout: ``proxy_connect_timeout``: a server that does not accept a connection
            in this time counts as failed (nginx's 60 s default would hold the request).
    """

    next_upstream: str = "error timeout"
    tries: int = 3
    timeout: str = "60s"
    connect_timeout: str = "5s"


@dataclass(frozen=True)
class Unavailable:
    """What a request gets when no server of its upstream is live: nginx's own 502 (no live
    server, every try failed) or 504 (timed out) become a 503 with ``Retry-After`` and a Matrix
    error body (``error_page ... = @location``; Synapse's own 502s pass through unchanged).

    Attributes:
        location: the named location that answers.
        codes: nginx's statuses it replaces.
        status: what the client gets.
        retry_after: seconds (``Retry-After``): about one worker restart.
        body: the Matrix error, JSON.
    """

    location: str = "@synapse_unavailable"
    codes: tuple[int, ...] = (502, 504)
    status: int = 503
    retry_after: int = 5
    body: str = (
        '{"errcode":"M_UNKNOWN","error":"This endpoint is restarting; retry in a few seconds"}'
    )

    @property
    def quoted_body(self) -> str:
        return _quote(self.body)


RETRY: Final = Retry()
UNAVAILABLE: Final = Unavailable()

# Idle keepalive connections each nginx worker process keeps per upstream: two per server as
# matrix-docker-ansible-deploy does (its PR #3076 load test), at least this many.
KEEPALIVE_MIN: Final = 16
# Shared-memory zone per upstream (state shared by nginx's worker processes): a base plus room
# for each server's peer record.
ZONE_BASE_KB: Final = 64
ZONE_PER_SERVER_KB: Final = 1


def _quote(value: str) -> str:
    """``value`` as an nginx double-quoted string (nginx reads ``\\\\`` and ``\\"`` back)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- What nginx gets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """One ``server`` line; ``process`` is its ``# <process>`` comment (what a drain finds)."""

    address: str  # host:port
    process: str
    backup: bool = False  # main standing in for a class with no live server

    @property
    def parameters(self) -> str:
        backup = " backup" if self.backup else ""
        return f"max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT_SECONDS}s{backup}"


@dataclass(frozen=True)
class Upstream:
    name: str
    servers: tuple[Server, ...]  # the backup (main), if any, last
    balance: str | None

    @property
    def fallback(self) -> bool:
        """Main takes the requests while no other server is live."""
        return any(s.backup for s in self.servers)

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
class NginxServer:
    """The ``server`` block's own directives, from the nginx settings.

    Attributes:
        listen: ``listen`` values (``host:port``, IPv6 in brackets).
        server_name: the ``server_name`` value (``_`` answers any Host).
        trusted_proxies: ``set_real_ip_from`` values (empty: no realip).
        access_log: the ``access_log`` value (``off``, or a path and the log format).
        client_max_body_size: its value.
        forwarded_proto: what ``X-Forwarded-Proto`` upstream says.
    """

    listen: tuple[str, ...]
    server_name: str
    trusted_proxies: tuple[str, ...]
    access_log: str
    client_max_body_size: str
    forwarded_proto: str


@dataclass(frozen=True)
class NginxRoutes:
    """Everything the nginx routing file holds (``templates/nginx/synapse-workers.conf.j2``)."""

    maps: tuple[NginxMap, ...]
    upstreams: tuple[Upstream, ...]
    groups: tuple[LocationGroup, ...]
    server: NginxServer
    retry: Retry = RETRY
    unavailable: Unavailable = UNAVAILABLE

    @property
    def locations(self) -> tuple[Location, ...]:
        return tuple(loc for g in self.groups for loc in g.locations)

    def upstream(self, name: str) -> Upstream:
        return next(u for u in self.upstreams if u.name == name)


# The hash keys. nginx evaluates a map only when an upstream's hash uses its variable.
_KEY_MAPS: Final = (
    NginxMap(
        source="$uri",
        variable="synapse_room",
        entries=(
            (_quote(r"~^/_matrix/client/.*?/rooms/([^/]+)"), "$1"),
            (_quote(r"~^/_matrix/client/.*?/(join|knock)/([^/]+)"), "$2"),
            (_quote(r"~^/_matrix/federation/v\d+/[^/]+/([^/]+)"), "$1"),
        ),
        default="$uri",
    ),
    NginxMap(
        source="$arg_access_token",
        variable="synapse_query_requester",
        entries=((_quote(r"~^syt_([A-Za-z0-9+/%]+?)_"), "$1"),),
        default="$arg_access_token",
    ),
    NginxMap(
        source="$http_authorization",
        variable="synapse_token_requester",
        entries=(
            (_quote(r"~*^Bearer\s+syt_([A-Za-z0-9+/]+)_"), "$1"),
            (_quote(r"~*^Bearer\s+(\S+)"), "$1"),
            (_quote(r'~*^X-Matrix\s.*\borigin="?([^",]+)'), "$1"),
        ),
        default="$synapse_query_requester",
    ),
    NginxMap(
        source="$synapse_token_requester",
        variable="synapse_requester",
        entries=(('""', "$remote_addr"),),
        default="$synapse_token_requester",
    ),
)
_FORWARDED_PROTO_MAP: Final = NginxMap(
    source="$http_x_forwarded_proto",
    variable="synapse_forwarded_proto",
    entries=(('""', "$scheme"),),
    default="$http_x_forwarded_proto",
)


def nginx_routes(
    plan: WorkerPlan, nginx: NginxSettings, reach: Callable[[Process], str] | None = None
) -> NginxRoutes:
    """nginx's maps, upstreams, ordered locations and server directives for ``plan``.

    Args:
        plan: the worker plan of one machine (its port check covered nginx's port), or a
            cluster's (``ClusterPlan.combined``).
        nginx: the nginx settings.
        reach: the address nginx connects to a process's HTTP listener at (a cluster: each
            worker at its machine's private address); by default one the listener binds.

    Returns:
        The routes; with no workers that serve HTTP, no locations (``location /`` is main).
    """
    pools = _pools(plan, reach)
    main = _server(plan.main, reach)
    upstreams: dict[str, Upstream] = {
        MAIN_UPSTREAM: Upstream(name=MAIN_UPSTREAM, servers=(main,), balance=None)
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
            if name not in upstreams:
                upstreams[name] = _upstream(name, servers, balance, target.routing, main)
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
                locations.append(
                    Location(
                        regex=regex,
                        upstream=upstream,
                        get_upstream=get_upstream,
                        rule=rule.name,
                        variable=variable,
                    )
                )
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
            maps.append(
                NginxMap(
                    source="$request_method", variable=variable, entries=choices, default=upstream
                )
            )
    return NginxRoutes(
        maps=tuple(maps),
        upstreams=tuple(u for u in upstreams.values() if u.name in used),
        groups=_group(locations),
        server=_server_directives(nginx),
    )


def _server_directives(nginx: NginxSettings) -> NginxServer:
    return NginxServer(
        listen=tuple(f"{_host(a)}:{nginx.listen_port}" for a in nginx.listen_addresses),
        server_name=" ".join(nginx.server_names) or "_",
        trusted_proxies=nginx.trusted_proxies,
        access_log=f"{nginx.access_log} {LOG_FORMAT}" if nginx.access_log else "off",
        client_max_body_size=nginx.client_max_body_size,
        forwarded_proto=(
            f"${_FORWARDED_PROTO_MAP.variable}" if nginx.trusted_proxies else "$scheme"
        ),
    )


# --- Helpers ----------------------------------------------------------------------------------


def _pools(
    plan: WorkerPlan, reach: Callable[[Process], str] | None
) -> dict[tuple[Routing, str | None], tuple[Server, ...]]:
    pools: dict[tuple[Routing, str | None], list[Server]] = {}
    for worker in plan.workers:
        t = worker.worker_type
        if t is None or t.routing is Routing.NONE or worker.listener("http") is None:
            continue
        stream = worker.stream.name if t.routing is Routing.STREAM and worker.stream else None
        pools.setdefault((t.routing, stream), []).append(_server(worker, reach))
    return {key: tuple(servers) for key, servers in pools.items()}


def _upstream(
    name: str, servers: tuple[Server, ...], balance: str | None, routing: Routing, main: Server
) -> Upstream:
    """One class's upstream: with one server no balance (it picks that server anyway), which
    lets main be its backup where ``MAIN_FALLBACK`` allows."""
    if len(servers) == 1:
        balance = None
    if MAIN_FALLBACK[routing] and balance in BACKUP_BALANCES:
        servers = (*servers, Server(address=main.address, process=main.process, backup=True))
    return Upstream(name=name, servers=servers, balance=balance)


def _pool_name(target: Target) -> str:
    if target.routing is Routing.STREAM:
        return f"synapse_stream_{target.stream}"
    return f"synapse_{target.routing.value}"


def _short(upstream: str) -> str:
    return upstream.removeprefix("synapse_").removeprefix("stream_")


def _server(process: Process, reach: Callable[[Process], str] | None) -> Server:
    http = process.listener("http")
    assert http is not None, process.name
    host = reach(process) if reach else connect_address(http.bind_addresses)
    address = f"{_host(host)}:{http.port}"
    return Server(address=address, process=process.name)


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _group(locations: list[Location]) -> tuple[LocationGroup, ...]:
    by_rule = itertools.groupby(locations, key=lambda loc: loc.rule)
    return tuple(LocationGroup(rule=rule, locations=tuple(locs)) for rule, locs in by_rule)
