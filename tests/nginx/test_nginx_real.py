"""The rendered worker-routing config in a real nginx, in front of stub upstreams.

Each plan gets its own loopback address (127.x.y.z, all of 127/8 is local on Linux) so its
planned ports never meet anything else on the machine. One asyncio thread serves a stub on every
planned HTTP listener (main and each worker); a stub answers any request with its process name.
nginx (Debian's ``nginx-light``) runs in the foreground as our child, on a config that includes
only the rendered file, and is stopped by its PID. Every table case of tests/unit/test_routing.py
and one sample per line of Synapse's docs/workers.md lists are sent through it and must be
answered by a process of the expected upstream (which nginx names in ``X-Synapse-Upstream``); the
processes of each upstream are known by their names, not asked of the routing code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import WorkerPlan
from deploys.core.routing import UPSTREAM_HEADER
from tests.unit.test_routing import EXPECTED, config_for, planned, table

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_PORT = 8088
START_TIMEOUT = 10.0


@pytest.fixture(autouse=True, scope="module")
def _nginx_installed() -> None:
    """Fail, never skip: a machine without nginx must not pass these tests silently."""
    if not Path(NGINX).exists():
        pytest.fail(
            "nginx is not installed: apt-get install nginx-light (make test does)", pytrace=False
        )


# --- Stub upstreams ---------------------------------------------------------------------------


class Stubs:
    """HTTP/1.1 keep-alive stubs on many (address, port)s, served by one asyncio thread.

    A request whose target has ``delay=<seconds>`` is answered that much later, one with
    ``status=<code>`` gets that status (as Synapse's own errors); a stub named in
    ``dying`` reads each request and closes the connection without answering (a process that
    stops mid-request).
    """

    def __init__(self, listeners: Mapping[tuple[str, int], str]) -> None:
        self.listeners = dict(listeners)
        self.requests: Counter[str] = Counter()
        self.connections: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.dying: set[str] = set()
        self._servers: dict[str, list[asyncio.AbstractServer]] = {}
        self._open: dict[str, set[asyncio.StreamWriter]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nginx-stubs", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> Stubs:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            self._thread.join(5)
            raise RuntimeError(f"stub upstreams did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stop_serving(self, name: str) -> None:
        """The process ``name`` stops: its ports refuse, its open connections are reset."""

        def stop() -> None:
            for server in self._servers.pop(name, []):
                server.close()
            for writer in self._open.pop(name, set()):
                writer.transport.abort()

        done = threading.Event()
        self._loop.call_soon_threadsafe(lambda: (stop(), done.set()))
        assert done.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        servers: list[asyncio.AbstractServer] = []
        try:
            for (address, port), name in self.listeners.items():
                serve = functools.partial(self._serve, name)
                server = self._loop.run_until_complete(
                    asyncio.start_server(serve, address, port, reuse_address=True)
                )
                servers.append(server)
                self._servers.setdefault(name, []).append(server)
        except BaseException as exc:  # reported by __enter__
            self._error = exc
        self._ready.set()
        if self._error is None:
            self._loop.run_forever()
        for server in servers:
            server.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _serve(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections[name] += 1
        self._open.setdefault(name, set()).add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                fields = (line.partition(":") for line in lines if line)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                if length := int(headers.get("content-length", "0")):
                    await reader.readexactly(length)
                method, target, _ = request_line.split(" ", 2)
                self.requests[name] += 1
                if name in self.dying:
                    break
                if delay := re.search(r"[?&]delay=([0-9.]+)", target):
                    await asyncio.sleep(float(delay.group(1)))
                body = b"" if method == "HEAD" else name.encode()
                asked = re.search(r"[?&]status=(\d+)", target)
                status = asked.group(1) if asked else "200"
                writer.write(
                    f"HTTP/1.1 {status} Stub\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(name)}\r\nX-Stub-Name: {name}\r\n"
                    f"X-Stub-Target: {target}\r\n"
                    f"X-Stub-Forwarded-For: {headers.get('x-forwarded-for', '')}\r\n"
                    f"X-Stub-Forwarded-Proto: {headers.get('x-forwarded-proto', '')}\r\n"
                    f"X-Stub-Connection: {headers.get('connection', '')}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                self.answered[name] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open.get(name, set()).discard(writer)
            writer.close()


# --- nginx ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    upstream: str | None  # X-Synapse-Upstream
    process: str | None  # the stub that answered
    headers: Mapping[str, str] = field(repr=False)
    body: str = field(default="", repr=False)


@dataclass
class Nginx:
    """A running nginx in front of the stubs of one plan."""

    plan: WorkerPlan
    address: str
    port: int
    stubs: Stubs
    access_log: Path
    pid: int  # the master's
    site: Path  # the rendered routing file
    conf: Path  # nginx.conf, which includes it

    def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> Answer:
        bind = (source, 0) if source else None
        conn = http.client.HTTPConnection(self.address, self.port, timeout=10, source_address=bind)
        try:
            body = b"{}" if method in ("POST", "PUT") else None
            conn.request(method, target, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            content = response.read().decode()
            got = {k.lower(): v for k, v in response.getheaders()}
            return Answer(
                response.status,
                got.get(UPSTREAM_HEADER.lower()),
                got.get("x-stub-name") or content or None,
                got,
                content,
            )
        finally:
            conn.close()

    def may_answer(self, upstream: str, process: str | None) -> bool:
        """``process`` is a planned process of the class ``upstream`` names (see CLASS_MEMBERS)."""
        planned = {p.name for p in self.plan.processes}
        return process in planned and bool(re.fullmatch(class_members(upstream), process or ""))


# Which processes belong to each upstream class, by their names (matrix-docker-ansible-deploy's
# "<type>-<n>" and "stream-writer-<n>-<stream>"): written here, not asked of the routing code.
CLASS_MEMBERS = {
    "synapse_main": r"main",
    "synapse_generic": r"generic-\d+",
    "synapse_generic_by_room": r"generic-\d+",
    "synapse_client_reader": r"client-reader-\d+",
    "synapse_room": r"room-\d+",
    "synapse_sync": r"sync-\d+",
    "synapse_federation_reader": r"federation-reader-\d+",
    "synapse_media": r"media-repository-\d+",
    "synapse_user_directory": r"user-dir-\d+",
}


def class_members(upstream: str) -> str:
    if upstream.startswith("synapse_stream_"):
        stream = upstream.removeprefix("synapse_stream_").replace("_", "-")
        return rf"stream-writer-\d+-{stream}"
    return CLASS_MEMBERS[upstream]


def free_loopback_address() -> str:
    """A random 127.x.y.z nobody listens on at the ports we need (nginx's)."""
    rng = random.Random()
    for _ in range(50):
        address = f"127.{rng.randint(100, 254)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((address, NGINX_PORT))
            except OSError:
                continue
        return address
    raise RuntimeError("no free loopback address")


def main_config(tmp: Path, include: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "worker_processes 1;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n{temp}\n    include {include};\n}}\n"
    )


def nginx_command(tmp: Path, conf: Path, *extra: str) -> list[str]:
    return [
        NGINX,
        "-p",
        f"{tmp}/",
        "-c",
        str(conf),
        "-e",
        "stderr",
        "-g",
        f"daemon off; pid {tmp}/nginx.pid; error_log stderr;",
        *extra,
    ]


def check_config(tmp: Path, conf: Path) -> None:
    result = subprocess.run(
        nginx_command(tmp, conf, "-t"), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@contextlib.contextmanager
def running_nginx(
    tmp: Path, plan_name: str, absent: Iterable[str] = (), **settings: Any
) -> Iterator[Nginx]:
    """nginx in front of a stub on every planned HTTP listener but those of ``absent``
    processes (their ports refuse connections)."""
    tmp.mkdir(parents=True, exist_ok=True)
    address = free_loopback_address()
    overrides = {
        "matrix_synapse_bind_addresses": [address],
        "matrix_synapse_nginx_listen_addresses": [address],
        "matrix_synapse_nginx_listen_port": NGINX_PORT,
        "matrix_synapse_nginx_access_log": str(tmp / "access.log"),
        **settings,
    }
    plan = planned(plan_name, **overrides)[1]
    site = tmp / "synapse-workers.conf"
    site.write_text(config_for(plan_name, **overrides))
    conf = tmp / "nginx.conf"
    conf.write_text(main_config(tmp, site))
    check_config(tmp, conf)
    listeners = {}
    for process in plan.processes:
        if (http := process.listener("http")) is not None and process.name not in absent:
            listeners[(address, http.port)] = process.name
    with Stubs(listeners) as stubs, (tmp / "nginx.stderr").open("w+") as stderr:
        proc = subprocess.Popen(
            nginx_command(tmp, conf),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            _wait_listening(proc, address, NGINX_PORT, tmp / "nginx.stderr")
            yield Nginx(plan, address, NGINX_PORT, stubs, tmp / "access.log", proc.pid, site, conf)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop nginx by its PID: SIGTERM (the master stops its worker), else SIGKILL both."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_listening(proc: subprocess.Popen[bytes], address: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
        with socket.socket() as s:
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.02)
    pytest.fail(f"nginx did not listen on {address}:{port}:\n{log.read_text()}", pytrace=False)


@pytest.fixture(scope="module")
def nginx_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Nginx]]:
    """``nginx_for(plan_name, **settings)``: a running nginx, one per arguments."""
    running: dict[tuple[Any, ...], Nginx] = {}
    with contextlib.ExitStack() as stack:

        def get(plan_name: str, **settings: Any) -> Nginx:
            key = (plan_name, *sorted(settings.items()))
            if key not in running:
                tmp = tmp_path_factory.mktemp(f"nginx-{plan_name}")
                running[key] = stack.enter_context(running_nginx(tmp, plan_name, **settings))
            return running[key]

        yield get


# --- Tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {
            "matrix_synapse_nginx_listen_addresses": ["127.0.0.1", "::1"],
            "matrix_synapse_nginx_listen_port": 18448,
            "matrix_synapse_nginx_server_names": ["matrix.example.org", "*.example.org"],
            "matrix_synapse_nginx_trusted_proxies": ["10.0.0.0/8", "fd00::/8"],
            "matrix_synapse_nginx_client_max_body_size": "100M",
            "matrix_synapse_nginx_access_log": None,
        },
    ],
)
@pytest.mark.parametrize("plan_name", list(EXPECTED))
def test_nginx_accepts_the_rendered_config(
    tmp_path: Path, plan_name: str, settings: dict[str, Any]
) -> None:
    site = tmp_path / "synapse-workers.conf"
    site.write_text(config_for(plan_name, **settings))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_config(tmp_path, site))
    check_config(tmp_path, conf)


@pytest.mark.parametrize("plan_name", list(EXPECTED))
def test_every_case_reaches_a_process_of_the_expected_upstream(
    nginx_for: Callable[..., Nginx], plan_name: str
) -> None:
    nginx = nginx_for(plan_name)
    wrong = {}
    for case, method, target, expected in table(plan_name):
        answer = nginx.request(method, target)
        if (answer.status, answer.upstream) != (200, expected) or not nginx.may_answer(
            expected, answer.process
        ):
            wrong[case] = (answer.status, answer.upstream, answer.process, expected)
    assert not wrong, f"case: (status, upstream, process, expected upstream): {wrong}"


# One sample request per line of Synapse's docs/workers.md lists (1.163.2, as quoted in
# /work/shared/reference/synapse-workers.md section 2) and the class that must serve it when
# generic workers, one writer per stream and a media worker run (one-of-each, 130-generic).
G, MAIN, MEDIA = "synapse_generic", "synapse_main", "synapse_media"
DEVICE_LISTS = "synapse_stream_device_lists"
QUARANTINE = "synapse_stream_quarantined_media_changes"
DOCS_SAMPLES = [
    # 2.1 generic worker: sync, federation, inbound transactions
    ("GET", "/_matrix/client/v3/initialSync", G),
    ("GET", "/_matrix/client/r0/rooms/!r:x/initialSync", G),
    ("GET", "/_matrix/federation/v1/version", G),
    ("GET", "/_matrix/federation/v1/state/!r:x", G),
    ("GET", "/_matrix/federation/v1/backfill/!r:x", G),
    ("POST", "/_matrix/federation/v1/get_missing_events/!r:x", G),
    ("GET", "/_matrix/federation/v1/publicRooms", G),
    ("GET", "/_matrix/federation/v1/query/profile", G),
    ("GET", "/_matrix/federation/v1/make_join/!r:x/@u:y", G),
    ("PUT", "/_matrix/federation/v2/send_join/!r:x/$e", G),
    ("PUT", "/_matrix/federation/v2/invite/!r:x/$e", G),
    ("GET", "/_matrix/federation/v1/event_auth/!r:x/$e", G),
    ("GET", "/_matrix/federation/v1/user/devices/@u:x", G),
    ("GET", "/_matrix/federation/v1/hierarchy/!r:x", G),
    ("PUT", "/_matrix/federation/v1/send/t1", G),
    # 2.1 client API, admin, encryption, registration, event sending
    ("POST", "/_matrix/client/v3/createRoom", G),
    ("GET", "/_matrix/client/v3/publicRooms", G),
    ("GET", "/_matrix/client/v3/rooms/!r:x/joined_members", G),
    ("GET", "/_matrix/client/v3/rooms/!r:x/context/$e", G),
    ("GET", "/_matrix/client/v1/rooms/!r:x/relations/$e", G),
    ("GET", "/_matrix/client/v1/rooms/!r:x/threads", G),
    ("GET", "/_matrix/client/v3/account/whoami", G),
    ("GET", "/_matrix/client/v3/voip/turnServer", G),
    ("GET", "/_matrix/client/v3/joined_rooms", G),
    ("POST", "/_matrix/client/v3/search", G),
    ("GET", "/_matrix/client/v3/user/@u:x/filter/1", G),
    ("GET", "/_matrix/client/v3/capabilities", G),
    ("GET", "/_matrix/client/v3/notifications", G),
    ("GET", "/_synapse/admin/v1/rooms/!r:x", G),
    ("GET", "/_matrix/client/v3/keys/changes", G),
    ("POST", "/_matrix/client/v3/keys/claim", G),
    ("GET", "/_matrix/client/v3/room_keys/version", G),
    ("GET", "/_matrix/client/v3/register/available", G),
    ("GET", "/_matrix/client/v3/password_policy", G),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/redact/$e/t1", G),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.room.topic/", G),
    ("POST", "/_matrix/client/v3/rooms/!r:x/invite", G),
    ("POST", "/_matrix/client/v3/knock/!r:x", G),
    ("GET", "/_matrix/client/v3/profile/@u:x", G),
    # 2.1 pagination: sticky per room
    ("GET", "/_matrix/client/v3/rooms/!r:x/messages", "synapse_generic_by_room"),
    # 2.2 stream writers
    ("POST", "/_matrix/client/v3/delete_devices", DEVICE_LISTS),
    ("POST", "/_matrix/client/v3/keys/device_signing/upload", DEVICE_LISTS),
    ("POST", "/_matrix/client/v3/keys/signatures/upload", DEVICE_LISTS),
    ("POST", "/_matrix/client/v3/rooms/!r:x/read_markers", "synapse_stream_receipts"),
    ("POST", "/_synapse/admin/v1/quarantine_media/!r:x", QUARANTINE),
    ("POST", "/_synapse/admin/v1/media/unquarantine/x/abc", QUARANTINE),
    # 2.3 media repository
    ("GET", "/_matrix/media/v3/thumbnail/x/abc", MEDIA),
    ("POST", "/_synapse/admin/v1/purge_media_cache", MEDIA),
    ("GET", "/_synapse/admin/v1/users/@u:x/media", MEDIA),
    # 2.5 main only
    ("POST", "/_matrix/client/v3/pushers/set", MAIN),
    ("GET", "/_matrix/client/v3/thirdparty/protocols", MAIN),
    ("POST", "/_matrix/client/v3/logout", MAIN),
]


@pytest.mark.parametrize("plan_name", ["one-of-each", "130-generic"])
def test_synapse_docs_endpoints_reach_a_process_of_the_documented_class(
    nginx_for: Callable[..., Nginx], plan_name: str
) -> None:
    nginx = nginx_for(plan_name)
    wrong = []
    for method, target, expected in DOCS_SAMPLES:
        answer = nginx.request(method, target)
        if (answer.status, answer.upstream) != (200, expected) or not nginx.may_answer(
            expected, answer.process
        ):
            wrong.append((method, target, answer.status, answer.upstream, answer.process, expected))
    assert not wrong


def test_a_process_outside_the_class_is_not_accepted(nginx_for: Callable[..., Nginx]) -> None:
    nginx = nginx_for("one-of-each")
    assert nginx.may_answer("synapse_stream_typing", "stream-writer-1-typing")
    assert not nginx.may_answer("synapse_stream_typing", "stream-writer-2-to-device")
    assert not nginx.may_answer("synapse_generic", "main")
    assert not nginx.may_answer("synapse_generic", "generic-7")  # not planned in one-of-each


# (plan, method, path, the process that must answer): the brief's cases, by worker name
NAMED_CASES = [
    ("one-of-each", "PUT", "/_matrix/client/v3/rooms/!r:x/typing/@a:x", "stream-writer-1-typing"),
    ("one-of-each", "PUT", "/_matrix/client/v3/sendToDevice/m.x/t1", "stream-writer-2-to-device"),
    (
        "one-of-each",
        "PUT",
        "/_matrix/client/v3/pushrules/global/override/r",
        "stream-writer-6-push-rules",
    ),
    ("one-of-each", "GET", "/_matrix/client/v3/pushrules/", "generic-0"),
    ("one-of-each", "HEAD", "/_matrix/client/v3/pushrules/", "generic-0"),
    ("one-of-each", "GET", "/_matrix/media/v3/download/x/abc", "media-repository-0"),
    ("one-of-each", "POST", "/_matrix/client/v3/login", "generic-0"),
    ("one-of-each", "POST", "/_matrix/client/v3/logout", "main"),
    ("one-of-each", "GET", "/whatever", "main"),
    (
        "one-of-each-without-typing-writer",
        "PUT",
        "/_matrix/client/v3/rooms/!r:x/typing/@a:x",
        "main",
    ),
    (
        "specialized-workers",
        "GET",
        "/_matrix/federation/v1/media/download/abc",
        "media-repository-0",
    ),
    ("specialized-workers", "POST", "/_matrix/client/v3/login", "client-reader-0"),
]


def test_named_cases_reach_the_named_worker(nginx_for: Callable[..., Nginx]) -> None:
    wrong = []
    for plan_name, method, path, process in NAMED_CASES:
        answer = nginx_for(plan_name).request(method, path)
        if (answer.status, answer.process) != (200, process):
            wrong.append((plan_name, method, path, answer.status, answer.process, process))
    assert not wrong


@pytest.mark.parametrize("plan_name", ["specialized-sharded", "130-generic"])
def test_room_pagination_is_sticky_per_room(
    nginx_for: Callable[..., Nginx], plan_name: str
) -> None:
    nginx = nginx_for(plan_name)
    messages = "/_matrix/client/v3/rooms/{}/messages?dir=b&from=t{}"
    for room in ("!abc:x", "!hot:example.org", "!v12roomidwithoutserver"):
        served = {nginx.request("GET", messages.format(room, i)).process for i in range(12)}
        assert len(served) == 1, (room, served)
    encoded = nginx.request("GET", messages.format("%21abc%3Ax", 0)).process
    assert encoded == nginx.request("GET", messages.format("!abc:x", 0)).process
    spread = {nginx.request("GET", messages.format(f"!room{i}:x", 0)).process for i in range(40)}
    assert len(spread) > 1
    if plan_name == "specialized-sharded":  # every request about a room meets on one room worker
        for i in range(10):
            room = f"!room{i}:x"
            sent = nginx.request("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.t/{i}")
            assert sent.process == nginx.request("GET", messages.format(room, 0)).process


def sync_token(localpart: str, device: int) -> str:
    """A token shaped like Synapse's: syt_<unpadded base64 localpart>_<random>_<crc>."""
    b64 = base64.b64encode(localpart.encode()).decode().rstrip("=")
    return f"syt_{b64}_device{device}random_crc{device}"


def test_sync_is_sticky_per_user(nginx_for: Callable[..., Nginx]) -> None:
    nginx = nginx_for("specialized-sharded")
    sync = "/_matrix/client/v3/sync?timeout=0"

    def worker(token: str, in_query: bool = False) -> str | None:
        if in_query:
            answer = nginx.request("GET", f"{sync}&access_token={token}")
        else:
            answer = nginx.request("GET", sync, {"Authorization": f"Bearer {token}"})
        assert answer.upstream == "synapse_sync"
        return answer.process

    for user in ("alice", "bob", "carol"):
        served = {worker(sync_token(user, d)) for d in range(6)}
        served.add(worker(sync_token(user, 9), in_query=True))
        assert len(served) == 1, (user, served)
    spread = {worker(sync_token(f"user{i}", 0)) for i in range(30)}
    assert len(spread) > 1
    opaque = {worker("mat_opaque_token_of_one_device") for _ in range(6)}  # MAS: per token
    assert len(opaque) == 1


def test_federation_transactions_are_sticky_per_origin(nginx_for: Callable[..., Nginx]) -> None:
    nginx = nginx_for("specialized-sharded")

    def reader(origin: str, n: int) -> str | None:
        auth = f'X-Matrix origin="{origin}",destination="x",key="ed25519:k{n}",sig="s{n}"'
        answer = nginx.request(
            "PUT", f"/_matrix/federation/v1/send/txn{n}", {"Authorization": auth}
        )
        assert answer.upstream == "synapse_federation_reader"
        return answer.process

    for origin in ("matrix.org", "example.com", "[2001:db8::1]:8448"):
        assert len({reader(origin, n) for n in range(8)}) == 1, origin
    assert len({reader(f"server{i}.example", 0) for i in range(30)}) > 1


def test_nginx_keeps_upstream_connections_alive_and_passes_the_raw_uri(
    nginx_for: Callable[..., Nginx],
) -> None:
    nginx = nginx_for("one-of-each")
    before = nginx.stubs.connections["generic-0"], nginx.stubs.requests["generic-0"]
    target = "/_matrix/client/v3/pushrules/global/override/%21rule%3Ax?x=%2F"
    for _ in range(20):  # through a method-split location, i.e. proxy_pass http://$variable
        answer = nginx.request("GET", target)
        assert answer.process == "generic-0"
        assert answer.headers["x-stub-target"] == target
        assert answer.headers["x-stub-connection"] == ""  # Connection "" -> keep-alive
    connections = nginx.stubs.connections["generic-0"] - before[0]
    assert nginx.stubs.requests["generic-0"] - before[1] == 20
    assert connections <= 2, connections


def test_client_address_and_scheme_reach_synapse(nginx_for: Callable[..., Nginx]) -> None:
    edge = "203.0.113.9"
    plain = nginx_for("one-of-each")
    answer = plain.request(
        "GET", "/_matrix/client/versions", {"X-Forwarded-For": edge, "X-Forwarded-Proto": "https"}
    )
    assert answer.headers["x-stub-forwarded-for"] != edge  # not trusted: the peer's address
    assert answer.headers["x-stub-forwarded-proto"] == "http"
    proxy = free_loopback_address()
    behind = nginx_for("one-of-each", matrix_synapse_nginx_trusted_proxies=(proxy,))
    answer = behind.request(
        "GET",
        "/_matrix/client/versions",
        {"X-Forwarded-For": edge, "X-Forwarded-Proto": "https"},
        source=proxy,
    )
    assert answer.headers["x-stub-forwarded-for"] == edge
    assert answer.headers["x-stub-forwarded-proto"] == "https"


def test_access_log_names_the_upstream_and_hides_query_tokens(
    nginx_for: Callable[..., Nginx],
) -> None:
    nginx = nginx_for("generic-only")
    # From an address of its own: another test's long-poll to this nginx may log after ours.
    source = free_loopback_address()
    answer = nginx.request(
        "GET", "/_matrix/client/v3/sync?access_token=syt_c2VjcmV0_secret_x", source=source
    )
    port = nginx.plan.worker(answer.process or "").listener("http").port  # type: ignore[union-attr]
    lines = nginx.access_log.read_text().splitlines()
    line = next(x for x in lines if x.startswith(f"{source} ") and "/_matrix/client/v3/sync" in x)
    assert "upstream=synapse_generic " in line and f"addr={nginx.address}:{port} " in line
    assert "secret" not in line
