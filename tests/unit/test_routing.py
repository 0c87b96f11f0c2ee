"""Where nginx sends each request, for each preset: a table of (method, path) -> upstream.

The tables are checked here by a small evaluator of the rendered location list that does what
nginx does (regex locations in file order on the decoded path, the first match wins, else
``location /``), and the very same tables are sent through a real nginx by
tests/nginx/test_nginx_real.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import pytest

from deploys.core import endpoints
from deploys.core.plan import WorkerPlan, build_plan
from deploys.core.render import nginx_config
from deploys.core.routing import (
    BACKUP_BALANCES,
    LEAST_CONN,
    MAIN_FALLBACK,
    MAIN_UPSTREAM,
    POOL_BALANCE,
    REQUESTER_HASH,
    ROOM_HASH,
    NginxRoutes,
    nginx_routes,
)
from deploys.core.settings import Settings, SettingsError, parse_settings
from deploys.core.worker_types import STREAM_WRITER, STREAMS, WORKER_TYPES, Routing
from tests.support.settings_data import make_data

# --- Plans ------------------------------------------------------------------------------------

NO_STREAM_WRITERS: Final = {s.count_key: 0 for s in STREAMS}
PLANS: Final[Mapping[str, Mapping[str, Any]]] = {
    "monolith": {"matrix_synapse_workers_enabled": False},
    "little-federation-helper": {"matrix_synapse_workers_preset": "little-federation-helper"},
    "one-of-each": {"matrix_synapse_workers_preset": "one-of-each"},
    "specialized-workers": {"matrix_synapse_workers_preset": "specialized-workers"},
    "one-of-each-without-typing-writer": {
        "matrix_synapse_workers_stream_writer_typing_stream_workers_count": 0,
    },
    "generic-only": {
        **{t.count_key: 0 for t in WORKER_TYPES},
        **NO_STREAM_WRITERS,
        "matrix_synapse_workers_generic_workers_count": 3,
    },
    "130-generic": {"matrix_synapse_workers_generic_workers_count": 130},
    "1000-workers": {  # as tests/synapse/test_real_synapse.py::test_1000_workers
        "matrix_synapse_workers_generic_workers_count": 959,
        "matrix_synapse_workers_stream_writer_events_stream_workers_count": 8,
        "matrix_synapse_workers_stream_writer_receipts_stream_workers_count": 4,
        "matrix_synapse_workers_stream_writer_device_lists_stream_workers_count": 4,
        "matrix_synapse_workers_federation_sender_workers_count": 8,
        "matrix_synapse_workers_pusher_workers_count": 4,
        "matrix_synapse_workers_media_repository_workers_count": 4,
    },
    # several workers per sticky pool, for the stickiness checks against real nginx
    "specialized-sharded": {
        "matrix_synapse_workers_preset": "specialized-workers",
        "matrix_synapse_workers_room_workers_count": 4,
        "matrix_synapse_workers_sync_workers_count": 3,
        "matrix_synapse_workers_federation_reader_workers_count": 3,
        "matrix_synapse_workers_client_reader_workers_count": 2,
        "matrix_synapse_workers_stream_writer_receipts_stream_workers_count": 2,
    },
}


def planned(name: str, **overrides: Any) -> tuple[Settings, WorkerPlan]:
    data = make_data(**{"matrix_synapse_workers_enabled": True, **PLANS[name], **overrides})
    settings = parse_settings(data)
    return settings, build_plan(settings, "host-a")


def build(name: str, **overrides: Any) -> WorkerPlan:
    return planned(name, **overrides)[1]


def routes_for(name: str, **overrides: Any) -> NginxRoutes:
    settings, plan = planned(name, **overrides)
    return nginx_routes(plan, settings.nginx)


def config_for(name: str, **overrides: Any) -> str:
    """The rendered nginx file; ``overrides`` are settings (``matrix_synapse_nginx_*`` too)."""
    settings, plan = planned(name, **overrides)
    return nginx_config(plan, settings.nginx)


# --- Cases ------------------------------------------------------------------------------------

# id -> (method, request target as a client sends it)
CASES: Final[Mapping[str, tuple[str, str]]] = {
    "typing": ("PUT", "/_matrix/client/v3/rooms/!abc:x/typing/@alice:x"),
    "send-to-device": ("PUT", "/_matrix/client/v3/sendToDevice/m.room.encrypted/txn1"),
    "push-rules-put": ("PUT", "/_matrix/client/v3/pushrules/global/override/rule1"),
    "push-rules-delete": ("DELETE", "/_matrix/client/v3/pushrules/global/override/rule1"),
    "push-rules-get": ("GET", "/_matrix/client/v3/pushrules/"),
    "account-data-put": ("PUT", "/_matrix/client/v3/user/@alice:x/account_data/m.direct"),
    "account-data-get": ("GET", "/_matrix/client/v3/user/@alice:x/account_data/m.direct"),
    "tags-put": ("PUT", "/_matrix/client/v3/user/@alice:x/rooms/!abc:x/tags/u.work"),
    "tags-get": ("GET", "/_matrix/client/v3/user/@alice:x/rooms/!abc:x/tags"),
    "receipt": ("POST", "/_matrix/client/v3/rooms/!abc:x/receipt/m.read/$ev1"),
    "read-markers": ("POST", "/_matrix/client/v3/rooms/!abc:x/read_markers"),
    "presence-put": ("PUT", "/_matrix/client/v3/presence/@alice:x/status"),
    "presence-get": ("GET", "/_matrix/client/v3/presence/@alice:x/status"),
    "keys-upload": ("POST", "/_matrix/client/v3/keys/upload"),
    "devices": ("GET", "/_matrix/client/v3/devices"),
    "thread-subscription": (
        "PUT",
        "/_matrix/client/unstable/io.element.msc4306/rooms/!abc:x/thread/$root/subscription",
    ),
    "quarantine-media": ("POST", "/_synapse/admin/v1/media/quarantine/x/abc"),
    "quarantine-room-media": ("POST", "/_synapse/admin/v1/room/!abc:x/media/quarantine"),
    "media-download": ("GET", "/_matrix/media/v3/download/x/abc"),
    "client-media": ("GET", "/_matrix/client/v1/media/download/x/abc"),
    "federation-media": ("GET", "/_matrix/federation/v1/media/download/abc"),
    "media-admin": ("GET", "/_synapse/admin/v1/room/!abc:x/media"),
    "user-directory": ("POST", "/_matrix/client/v3/user_directory/search"),
    "sync": ("GET", "/_matrix/client/v3/sync?since=s1&timeout=30000"),
    "sliding-sync": ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"),
    "events": ("GET", "/_matrix/client/v3/events"),
    "messages": ("GET", "/_matrix/client/v3/rooms/!abc:x/messages?dir=b"),
    "messages-encoded": ("GET", "/_matrix/client/v3/rooms/%21abc%3Ax/messages"),
    "send-event": ("PUT", "/_matrix/client/v3/rooms/!abc:x/send/m.room.message/txn1"),
    "room-state": ("GET", "/_matrix/client/v3/rooms/!abc:x/state"),
    "join": ("POST", "/_matrix/client/v3/join/%23room:x"),
    "login": ("POST", "/_matrix/client/v3/login"),
    "login-flows": ("GET", "/_matrix/client/r0/login"),
    "register": ("POST", "/_matrix/client/v3/register"),
    "versions": ("GET", "/_matrix/client/versions"),
    "keys-query": ("POST", "/_matrix/client/v3/keys/query"),
    "account-3pid": ("GET", "/_matrix/client/v3/account/3pid"),
    "room-directory": ("GET", "/_matrix/client/v3/directory/room/%23room:x"),
    "sso-redirect": ("GET", "/_matrix/client/v3/login/sso/redirect?redirectUrl=https://a/"),
    "pick-idp": ("GET", "/_synapse/client/pick_idp"),
    "logout": ("POST", "/_matrix/client/v3/logout"),
    "logout-all": ("POST", "/_matrix/client/v3/logout/all"),
    "pushers": ("GET", "/_matrix/client/v3/pushers"),
    "room-upgrade": ("POST", "/_matrix/client/v3/rooms/!abc:x/upgrade"),
    "add-3pid": ("POST", "/_matrix/client/v3/account/3pid/add"),
    "directory-list": ("PUT", "/_matrix/client/v3/directory/list/room/!abc:x"),
    "admin-user-get": ("GET", "/_synapse/admin/v2/users/@alice:x"),
    "admin-user-put": ("PUT", "/_synapse/admin/v2/users/@alice:x"),
    "delayed-event-get": ("GET", "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1"),
    "delayed-event-update": (
        "POST",
        "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/d1",
    ),
    "admin-server-version": ("GET", "/_synapse/admin/v1/server_version"),
    "federation-send": ("PUT", "/_matrix/federation/v1/send/txn1"),
    "federation-event": ("GET", "/_matrix/federation/v1/event/$ev1"),
    "federation-state-ids": ("GET", "/_matrix/federation/v1/state_ids/!abc:x?event_id=$e"),
    "federation-userinfo": ("GET", "/_matrix/federation/v1/openid/userinfo"),
    "key-server": ("GET", "/_matrix/key/v2/server"),
    "key-query": ("POST", "/_matrix/key/v2/query"),
    "well-known": ("GET", "/.well-known/matrix/server"),
    "unknown": ("GET", "/no/such/path"),
}

M, G, CR = MAIN_UPSTREAM, "synapse_generic", "synapse_client_reader"
ROOM, SYNC, FR = "synapse_room", "synapse_sync", "synapse_federation_reader"
MEDIA, UD = "synapse_media", "synapse_user_directory"

EVERYTHING_TO_MAIN: Final = dict.fromkeys(CASES, M)
ONE_OF_EACH: Final = {
    **EVERYTHING_TO_MAIN,
    "typing": "synapse_stream_typing",
    "send-to-device": "synapse_stream_to_device",
    "push-rules-put": "synapse_stream_push_rules",
    "push-rules-delete": "synapse_stream_push_rules",
    "push-rules-get": G,
    "account-data-put": "synapse_stream_account_data",
    "account-data-get": G,
    "tags-put": "synapse_stream_account_data",
    "tags-get": G,
    "receipt": "synapse_stream_receipts",
    "read-markers": "synapse_stream_receipts",
    "presence-put": "synapse_stream_presence",
    "presence-get": G,
    "keys-upload": "synapse_stream_device_lists",
    "devices": "synapse_stream_device_lists",
    "thread-subscription": M,  # the presets plan no thread_subscriptions writer
    "quarantine-media": "synapse_stream_quarantined_media_changes",
    "quarantine-room-media": "synapse_stream_quarantined_media_changes",
    "media-download": MEDIA,
    "client-media": MEDIA,
    "federation-media": MEDIA,
    "media-admin": MEDIA,
    "user-directory": UD,
    "sync": G,
    "sliding-sync": G,
    "events": G,
    "messages": "synapse_generic_by_room",
    "messages-encoded": "synapse_generic_by_room",
    "send-event": G,
    "room-state": G,
    "join": G,
    "login": G,
    "login-flows": G,
    "register": G,
    "versions": G,
    "keys-query": G,
    "account-3pid": G,
    "room-directory": G,
    "admin-user-get": G,
    "delayed-event-get": G,
    "federation-send": G,
    "federation-event": G,
    "federation-state-ids": G,
    "key-query": G,
}
SPECIALIZED: Final = {
    **ONE_OF_EACH,
    "push-rules-get": CR,
    "account-data-get": CR,
    "tags-get": CR,
    "presence-get": CR,
    "sync": SYNC,
    "sliding-sync": SYNC,
    "events": SYNC,
    "messages": ROOM,
    "messages-encoded": ROOM,
    "send-event": ROOM,
    "room-state": ROOM,
    "join": ROOM,
    "login": CR,
    "login-flows": CR,
    "register": CR,
    "versions": CR,
    "keys-query": CR,
    "account-3pid": CR,
    "room-directory": CR,
    "admin-user-get": CR,
    "delayed-event-get": CR,
    "federation-send": FR,
    "federation-event": FR,
    "federation-state-ids": ROOM,
    "key-query": FR,
}
GENERIC_ONLY: Final = {  # no writers, no media or user-directory worker
    **ONE_OF_EACH,
    **{case: M for case, upstream in ONE_OF_EACH.items() if upstream.startswith("synapse_stream")},
    "media-download": M,
    "client-media": M,
    "federation-media": M,  # main, not the generic workers' federation rule (MDAD #3918)
    "media-admin": M,
    "user-directory": G,
}
EXPECTED: Final[Mapping[str, Mapping[str, str]]] = {
    "monolith": EVERYTHING_TO_MAIN,
    "little-federation-helper": EVERYTHING_TO_MAIN,
    "one-of-each": ONE_OF_EACH,
    "specialized-workers": SPECIALIZED,
    "one-of-each-without-typing-writer": {**ONE_OF_EACH, "typing": M},
    "generic-only": GENERIC_ONLY,
    "130-generic": ONE_OF_EACH,
    "1000-workers": ONE_OF_EACH,
    "specialized-sharded": SPECIALIZED,
}


def table(plan_name: str) -> list[tuple[str, str, str, str]]:
    """(case id, method, target, expected upstream) for one plan."""
    return [(case, *CASES[case], EXPECTED[plan_name][case]) for case in CASES]


# --- The evaluator ----------------------------------------------------------------------------


def evaluate(routes: NginxRoutes, method: str, target: str) -> str:
    """The upstream nginx picks: the first regex location matching the decoded path, else main."""
    path = unquote(urlsplit(target).path)
    for location in routes.locations:
        if re.search(location.regex, path):
            if location.get_upstream and method in ("GET", "HEAD"):
                return location.get_upstream
            return location.upstream
    return MAIN_UPSTREAM


@pytest.mark.parametrize("plan_name", list(EXPECTED))
def test_every_case_reaches_the_expected_upstream(plan_name: str) -> None:
    routes = routes_for(plan_name)
    wrong = {
        case: (evaluate(routes, method, target), expected)
        for case, method, target, expected in table(plan_name)
        if evaluate(routes, method, target) != expected
    }
    assert not wrong, f"case: (got, expected): {wrong}"
    names = {u.name for u in routes.upstreams}
    assert set(EXPECTED[plan_name].values()) <= names


# --- Properties of the rules and the rendered file --------------------------------------------


def test_no_workers_sends_everything_to_main() -> None:
    for plan_name in ("monolith", "little-federation-helper"):
        routes = routes_for(plan_name)
        assert routes.locations == ()
        assert [u.name for u in routes.upstreams] == [MAIN_UPSTREAM]
        config = config_for(plan_name)
        assert "location ~" not in config and "location / {" in config


def test_every_stream_has_its_endpoint_lists() -> None:
    assert set(endpoints.STREAM_ENDPOINTS) == {s.name for s in STREAMS}
    for stream in STREAMS:
        assert bool(endpoints.STREAM_ENDPOINTS[stream.name].all) == stream.webserving, stream.name


def test_every_routing_class_has_a_balance_and_every_routed_type_gets_traffic() -> None:
    assert set(POOL_BALANCE) == set(Routing) - {Routing.NONE}
    for t in WORKER_TYPES:
        if t.routing is Routing.NONE:
            continue
        routes = routes_for(
            "generic-only", **{"matrix_synapse_workers_generic_workers_count": 0, t.count_key: 1}
        )
        used = {loc.upstream for loc in routes.locations}
        assert f"synapse_{t.routing.value}" in used, t.key
    assert STREAM_WRITER.routing is Routing.STREAM
    for stream in STREAMS:
        if stream.webserving:
            routes = routes_for("generic-only", **{stream.count_key: 1})
            used = {loc.upstream for loc in routes.locations}
            assert f"synapse_stream_{stream.name}" in used, stream.name


def test_endpoint_regexes_compile_and_are_not_repeated_within_a_list() -> None:
    lists = {
        name: value
        for name, value in vars(endpoints).items()
        if name.isupper() and isinstance(value, tuple)
    }
    lists.update({f"stream {n}": e.all for n, e in endpoints.STREAM_ENDPOINTS.items()})
    assert len(lists) > 10
    for name, regexes in lists.items():
        assert len(regexes) == len(set(regexes)), name
        for regex in regexes:
            assert regex.startswith("^/"), (name, regex)
            re.compile(regex)


def test_generic_workers_serve_the_union_of_the_specialised_lists() -> None:
    specialised = (
        *endpoints.SYNC,
        *endpoints.ROOM_MESSAGES,
        *endpoints.ROOM_CLIENT,
        *endpoints.CLIENT_READER,
        *endpoints.USER_DIRECTORY,
    )
    assert set(endpoints.GENERIC_WORKER_CLIENT) == set(specialised)
    assert set(endpoints.FEDERATION_READER) == {
        *endpoints.ROOM_FEDERATION,
        *endpoints.FEDERATION,
        *endpoints.FEDERATION_INBOUND,
    }
    stream_regexes = {r for e in endpoints.STREAM_ENDPOINTS.values() for r in e.all}
    assert not stream_regexes & set(endpoints.GENERIC_WORKER_CLIENT)


def test_federation_media_comes_before_every_federation_reader_location() -> None:
    locations = routes_for("specialized-workers").locations
    media = next(
        i for i, loc in enumerate(locations) if loc.regex == r"^/_matrix/federation/v1/media/"
    )
    readers = [i for i, loc in enumerate(locations) if loc.upstream == FR]
    assert readers and media < min(readers)
    assert locations[-1].upstream == FR  # federation readers come last


def test_sticky_upstreams_hash_by_room_and_by_requester() -> None:
    routes = routes_for("specialized-sharded")
    assert routes.upstream(ROOM).balance == ROOM_HASH
    assert routes.upstream(SYNC).balance == REQUESTER_HASH
    assert routes.upstream(FR).balance == REQUESTER_HASH
    assert len(routes.upstream(ROOM).servers) == 4
    generic = routes_for("130-generic")
    assert generic.upstream("synapse_generic_by_room").balance == ROOM_HASH
    assert generic.upstream(G).balance == REQUESTER_HASH
    assert generic.upstream(G).servers == generic.upstream("synapse_generic_by_room").servers


def test_rendered_upstreams_use_keepalive_http11_and_name_themselves() -> None:
    routes = routes_for("one-of-each")
    config = config_for("one-of-each")
    assert "proxy_http_version 1.1;" in config
    assert 'proxy_set_header Connection "";' in config
    assert config.count("upstream synapse_") == len(routes.upstreams)
    assert config.count("    keepalive ") == len(routes.upstreams)
    assert config.count("add_header X-Synapse-Upstream ") == len(routes.locations) + 1
    assert "log_format synapse_workers" in config and "$upstream_addr" in config
    assert "$request " not in config  # the access log never holds a query-string token
    for m in routes.maps:  # nginx's variables hash refuses much longer names
        assert len(m.variable) <= 40, m.variable


def test_settings_reach_the_server_block() -> None:
    config = config_for(
        "one-of-each",
        matrix_synapse_nginx_listen_addresses=["127.0.0.1", "::1"],
        matrix_synapse_nginx_listen_port=8448,
        matrix_synapse_nginx_server_names=["matrix.example.org"],
        matrix_synapse_nginx_trusted_proxies=["10.0.0.0/8"],
        matrix_synapse_nginx_client_max_body_size="100M",
        matrix_synapse_nginx_access_log=None,
    )
    for line in (
        "listen 127.0.0.1:8448;",
        "listen [::1]:8448;",
        "server_name matrix.example.org;",
        "set_real_ip_from 10.0.0.0/8;",
        "real_ip_header X-Forwarded-For;",
        "client_max_body_size 100M;",
        "access_log off;",
        "proxy_set_header X-Forwarded-Proto $synapse_forwarded_proto;",
    ):
        assert f"    {line}\n" in config, line
    default = config_for("one-of-each")
    assert "set_real_ip_from" not in default and "X-Forwarded-Proto $scheme;" in default


def test_nginx_on_a_synapse_port_is_refused_by_the_plans_port_check_naming_both_settings() -> None:
    with pytest.raises(SettingsError) as caught:
        build("one-of-each", matrix_synapse_nginx_listen_port=15000)
    assert caught.value.problems == (
        "matrix_synapse_nginx_listen_port = 15000: nginx (http) would listen on port 15000, "
        "already taken by generic-0 (http, from "
        "matrix_synapse_workers_generic_workers_port_range_start); allowed: a port no other "
        "listener uses",
    )
    with pytest.raises(SettingsError, match="already taken by main"):
        build(
            "one-of-each",
            matrix_synapse_nginx_listen_addresses=["0.0.0.0"],
            matrix_synapse_nginx_listen_port=8008,
        )
    # Another address on the same port: the kernel allows it, and so does the check.
    plan = build(
        "one-of-each",
        matrix_synapse_nginx_listen_addresses=["127.0.0.2"],
        matrix_synapse_nginx_listen_port=8008,
    )
    assert plan.nginx is not None and plan.nginx.port == plan.main.listeners[0].port
    # nginx off: its port is no listener at all.
    build("one-of-each", matrix_synapse_nginx_enabled=False, matrix_synapse_nginx_listen_port=15000)


def test_1000_workers_render_deterministically() -> None:
    # How fast is the benchmark's business (make bench), not a unit test's.
    settings, plan = planned("1000-workers")
    assert len(plan.workers) == 1000
    config = nginx_config(plan, settings.nginx)
    assert nginx_config(plan, settings.nginx) == config
    routes = nginx_routes(plan, settings.nginx)
    assert len(routes.upstream(G).servers) == 959
    assert len(routes.locations) < 200  # locations do not grow with workers


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("matrix_synapse_nginx_listen_addresses", ["localhost"]),
        ("matrix_synapse_nginx_listen_addresses", []),
        ("matrix_synapse_nginx_listen_port", 70000),
        ("matrix_synapse_nginx_server_names", ["a.org; return 200"]),
        ("matrix_synapse_nginx_server_names", "matrix.example.org"),
        ("matrix_synapse_nginx_trusted_proxies", ["10.0.0.0/33"]),
        ("matrix_synapse_nginx_client_max_body_size", "50M; x"),
        ("matrix_synapse_nginx_access_log", "relative.log"),
        ("matrix_synapse_nginx_access_log", "/var/log/a b.log"),
        ("matrix_synapse_nginx_access_log", "/var/log/a;b.log"),
        ("matrix_synapse_nginx_config_path", "conf.d/synapse.conf"),
        ("matrix_synapse_nginx_enabled", "yes"),
    ],
)
def test_bad_nginx_settings_are_refused_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(make_data(**{key: value}))
    (line,) = caught.value.problems  # one problem per bad key, not one per check
    assert line.startswith(f"{key} = {value!r}: allowed: "), line


def test_good_nginx_settings_have_no_problems() -> None:
    settings = parse_settings(
        make_data(
            matrix_synapse_nginx_listen_addresses=["0.0.0.0", "::"],
            matrix_synapse_nginx_listen_port=443,
            matrix_synapse_nginx_server_names=["matrix.example.org", "*.example.org"],
            matrix_synapse_nginx_trusted_proxies=["10.0.0.0/8", "::1"],
            matrix_synapse_nginx_client_max_body_size="1g",
            matrix_synapse_nginx_access_log=None,
        )
    )
    build_plan(settings, "host-a")  # no port problem either
    nginx = settings.nginx
    assert nginx.listen_addresses == ("0.0.0.0", "::")
    assert nginx.listen_port == 443  # nginx may bind a privileged port; Synapse may not
    assert nginx.trusted_proxies == ("10.0.0.0/8", "::1")


# --- Restarts: retries, main as a fallback, 503 --------------------------------------------------


def test_every_routing_class_says_whether_main_stands_in() -> None:
    assert set(MAIN_FALLBACK) == set(Routing) - {Routing.NONE}
    # main has no media servlets beside media workers and refuses or forwards a stream's writes
    assert not MAIN_FALLBACK[Routing.MEDIA] and not MAIN_FALLBACK[Routing.STREAM]


def test_a_single_server_class_falls_back_to_main_where_synapse_allows_it() -> None:
    routes = routes_for("specialized-workers")  # one worker of each class
    main = routes.upstream(M).servers[0]
    for name in (ROOM, SYNC, CR, FR, UD):
        upstream = routes.upstream(name)
        worker, backup = upstream.servers
        assert upstream.balance is None, name  # hashing one server only forbids a backup
        assert not worker.backup and worker.process != "main", name
        assert (backup.process, backup.address, backup.backup) == ("main", main.address, True)
        assert upstream.fallback
    no_fallback = [MEDIA] + [
        u.name for u in routes.upstreams if u.name.startswith("synapse_stream")
    ]
    assert len(no_fallback) == 9
    for name in no_fallback:
        assert [s.backup for s in routes.upstream(name).servers] == [False], name
    assert routes.upstream(M).servers == (main,) and not main.backup
    one = routes_for("one-of-each")  # one generic worker: main behind it, by user and by room
    for name in (G, "synapse_generic_by_room"):
        assert [s.process for s in one.upstream(name).servers] == ["generic-0", "main"]
        assert one.upstream(name).fallback


def test_sticky_classes_with_several_servers_keep_their_hash_and_have_no_backup() -> None:
    routes = routes_for("specialized-sharded")
    for name, balance, count in (
        (ROOM, ROOM_HASH, 4),
        (SYNC, REQUESTER_HASH, 3),
        (FR, REQUESTER_HASH, 3),
    ):
        upstream = routes.upstream(name)
        assert (upstream.balance, len(upstream.servers), upstream.fallback) == (
            balance,
            count,
            False,
        )
    readers = routes.upstream(CR)  # least_conn allows a backup
    assert readers.balance == LEAST_CONN
    assert [s.process for s in readers.servers] == ["client-reader-0", "client-reader-1", "main"]
    receipts = routes.upstream("synapse_stream_receipts")  # two writers: each other's retry
    assert len(receipts.servers) == 2 and not receipts.fallback


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_nginx_never_gets_a_backup_beside_a_hash(plan_name: str) -> None:
    config = config_for(plan_name)
    for upstream in routes_for(plan_name).upstreams:
        if upstream.fallback:
            assert upstream.balance in BACKUP_BALANCES, upstream.name
            assert upstream.servers[-1].backup
            assert sum(s.backup for s in upstream.servers) == 1
    for block in re.findall(r"upstream \S+ \{.*?\}", config, re.S):
        assert not ("backup" in block and "hash " in block), block


def test_every_server_line_fails_fast_and_names_its_process() -> None:
    routes = routes_for("specialized-sharded")
    config = config_for("specialized-sharded")
    lines = [x.strip() for x in config.splitlines() if x.startswith("    server ")]
    assert len(lines) == sum(len(u.servers) for u in routes.upstreams)
    for line in lines:
        assert re.fullmatch(
            r"server \S+ max_fails=1 fail_timeout=1s( backup)?;  # [a-z0-9-]+", line
        ), line
    assert sum(line.endswith("# main") for line in lines) == 1 + sum(
        u.fallback for u in routes.upstreams
    )


def test_idempotent_requests_are_retried_elsewhere_and_no_live_server_is_a_matrix_503() -> None:
    config = config_for("one-of-each")
    retry, page = routes_for("one-of-each").retry, routes_for("one-of-each").unavailable
    assert "    proxy_next_upstream error timeout;" in config  # not non_idempotent, not http_502
    assert "non_idempotent" not in config and "http_50" not in config
    assert "    proxy_next_upstream_tries 3;" in config
    assert "    proxy_next_upstream_timeout 60s;" in config  # a 30 s /sync cut once is retried
    assert int(retry.timeout.removesuffix("s")) > 30
    assert "    error_page 502 504 = @synapse_unavailable;" in config
    location = re.search(r"location @synapse_unavailable \{(.*?)\n    \}", config, re.S)
    assert location is not None
    body = location.group(1)
    assert "add_header Retry-After 5 always;" in body
    assert "default_type application/json;" in body
    returned = re.search(r'return 503 "(.*)";', body)
    assert returned is not None
    error = json.loads(returned.group(1).replace('\\"', '"'))
    assert error["errcode"] == "M_UNKNOWN" and json.loads(page.body) == error
