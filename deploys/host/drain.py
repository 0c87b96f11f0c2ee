"""Drain processes out of nginx before they stop, and put them back after. Standard library only.

nginx's routing file (``deploys/core/routing.py`` renders it) names each upstream server's
process in a trailing comment: ``server 127.0.0.1:15001 max_fails=1 fail_timeout=1s;  # generic-1``.
``drain(spec, processes)`` rewrites the live file with those servers marked ``down`` (main's
``backup`` lines too when ``main`` is among them), checks it (``nginx -t``), reloads nginx and
waits until the reload took (new nginx worker processes, the old ones shutting down), then until
no connection to a drained server is open, for at most ``spec.grace`` seconds. A reload lets
nginx's old worker processes finish the requests they hold, new ones never pick a ``down``
server, and both close idle keepalive connections, so an open connection to a drained server is
a request in flight. A request still in flight when the grace ends is cut when its process
stops; nginx passes an idempotent one (a long-poll ``/sync``) to another server of the class,
once (``proxy_next_upstream``).

``before_wave`` and ``after_wave`` frame one restart wave (``host/apply.py``): the processes it
stops are drained, and those it or a later wave starts (new workers, in this run's file but not
running yet) are down too until they run, so nginx never tries them early.

``undrain(spec)`` writes the managed file back. Every rewrite is atomic (a temporary sibling with
the live file's mode and owner, renamed over it), and both edit only the managed content
(``spec.sha256``): the template never writes ``down``, so taking every ``down`` out of a drained
file gives the managed one back exactly, which the sha256 proves. A run killed while its file
was drained leaves that file; the next run's fact reads a sha256 that is not the managed one and
the batch writes the managed content again.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import units
from .batch import ApplyError
from .files import write_atomically
from .manifest import DrainSpec

# One upstream server line: address, parameters, optional "down", its process in the comment.
_SERVER_LINE = re.compile(
    r"^(?P<head>\s*server\s+(?P<address>\S+)[^;#]*?)(?P<down> down)?"
    r"(?P<tail>;\s*#\s*(?P<process>\S+)\s*)$"
)
ESTABLISHED = "01"  # the state column of /proc/net/tcp
LISTEN = "0A"
WILDCARD_AS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
POLL_SECONDS = 0.05
RELOAD_TIMEOUT = 10.0  # seconds for nginx's new worker processes to appear after a reload


class DrainError(ApplyError):
    """nginx's routing file could not be drained or put back; the message says why."""


@dataclass(frozen=True)
class Drained:
    """What a drain did: the servers it waited for (process, address), how long, how many
    connections to them were still open when it stopped waiting, and whether it rewrote the
    file (and reloaded nginx)."""

    servers: tuple[tuple[str, str], ...]
    waited: float
    in_flight: int
    rewritten: bool = False


def mark_down(
    text: str, processes: Iterable[str], running: Iterable[str] | None = None
) -> tuple[str, list[tuple[str, str]]]:
    """``text`` with the server lines of ``processes`` marked ``down``; and those servers.

    A line of a process in ``running`` (by default all of ``processes``: they serve until they
    stop) stays as it is when its upstream has no other server left up: marking that server
    down would only answer its requests with 503 earlier (an upstream with one server and no
    ``backup`` line: a stream writer, media, main's own upstream); they fail at its stop anyway.
    """
    wanted = set(processes)
    running = wanted if running is None else set(running) & wanted
    lines = text.split("\n")
    alone: set[int] = set()  # indexes of running servers with no alternative in their upstream
    block: list[tuple[int, str]] = []  # the current upstream's server lines: (index, process)
    for i, line in enumerate([*lines, "}"]):
        if m := _SERVER_LINE.match(line):
            block.append((i, m["process"]))
        elif line.strip() == "}" and block:
            if all(p in wanted for _, p in block):
                alone.update(j for j, p in block if p in running)
            block = []
    servers = []
    for i, line in enumerate(lines):
        m = _SERVER_LINE.match(line)
        if m and m["process"] in wanted and i not in alone:
            servers.append((m["process"], m["address"]))
            lines[i] = f"{m['head']} down{m['tail']}"
    return "\n".join(lines), servers


def servers_of(text: str) -> dict[str, list[str]]:
    """process -> the addresses of its server lines."""
    found: dict[str, list[str]] = {}
    for line in text.split("\n"):
        if m := _SERVER_LINE.match(line):
            found.setdefault(m["process"], []).append(m["address"])
    return found


def undrained(text: str) -> str:
    """``text`` with every server line's ``down`` taken out (the managed file never has one)."""
    return "\n".join(
        f"{m['head']}{m['tail']}" if (m := _SERVER_LINE.match(line)) else line
        for line in text.split("\n")
    )


def route(
    spec: DrainSpec,
    down: Iterable[str],
    wait_for: Iterable[str] = (),
    reload: Callable[[DrainSpec], None] | None = None,
    restarting: Iterable[str] = (),
) -> Drained:
    """Make the live file the managed one with the servers of ``down`` marked down (none: the
    managed file itself), reload nginx if that changed it, then wait for the requests in flight
    on the servers of ``wait_for`` (processes about to stop, among ``down``).

    Args:
        spec: the routing file, its managed sha256, the grace period, nginx's unit and check.
        down: process names (``main``: main's server and its ``backup`` lines too). One with no
            server line (a federation sender) changes nothing.
        wait_for: the processes whose in-flight requests to wait for, at most ``spec.grace``:
            running ones, so a line of theirs with no alternative in its upstream stays up
            (``mark_down``), and a process with such a line is not waited for.
        restarting: processes of ``down`` stopped and started again, not ready yet: their
            lines with no alternative stay up as before their stop (unchanged, no reload).
        reload: reloads nginx and returns once the new configuration serves; by default
            ``systemctl reload`` of ``spec.unit`` (``reload_unit``).

    Returns:
        The servers waited for, how long, what was still open; whether the file was rewritten.

    Raises:
        DrainError: the live file without its ``down`` marks is not the managed one, or the
            check or the reload failed (the previous file is back then).
    """
    live = _read(spec.path)
    base = _managed(spec, live)
    wait_for = set(wait_for)
    text, marked = mark_down(base, down, wait_for | set(restarting))
    if text != live:
        _rewrite(spec, text, live, reload or reload_unit)
    # Requests keep reaching a process with a line left up: waiting for them would only hold
    # the wave for the whole grace; they are cut at its stop.
    every = servers_of(base)
    waiting = {p for p in wait_for if len(every.get(p, ())) == sum(q == p for q, _ in marked)}
    servers = tuple((p, a) for p, a in marked if p in waiting)
    waited, open_now = _wait_closed({_socket_address(a) for _, a in servers}, spec.grace)
    return Drained(servers, waited, open_now, text != live)


def wait_for_stale(units_: Iterable[str], grace: float) -> tuple[float, int]:
    """Stale workers nginx no longer routes to (it was reloaded without them): wait until no
    connection to an address they listen on is open, at most ``grace`` seconds, so their stop
    cuts no request nginx's old worker processes still hold. Returns how long it waited and
    how many connections were still open."""
    units_ = list(units_)
    if not units_:
        return 0.0, 0
    shown = _run(["systemctl", "show", "--property=MainPID", *units_]).stdout
    pids = [int(v) for line in shown.split() if (v := line.partition("=")[2]).isdigit()]
    addresses = set().union(*(listening_addresses(pid) for pid in pids if pid > 0))
    return _wait_closed(addresses, grace)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on (a wildcard one as loopback: how nginx on
    this host reaches it)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:  # gone already
        return set()
    found = set()
    for fields, family in _tcp_rows():
        if fields[3] == LISTEN and fields[9] in inodes:
            ip, port = _proc_address(fields[1], family)
            found.add((WILDCARD_AS.get(ip, ip), port))
    return found


def drain(
    spec: DrainSpec, processes: Iterable[str], reload: Callable[[DrainSpec], None] | None = None
) -> Drained:
    """Mark the servers of ``processes`` (only) down, reload nginx, wait for their requests in
    flight (``route``)."""
    processes = list(processes)
    return route(spec, processes, processes, reload)


def undrain(spec: DrainSpec, reload: Callable[[DrainSpec], None] | None = None) -> bool:
    """Write the managed routing file back and reload nginx; False if nothing was drained."""
    return route(spec, (), (), reload).rewritten


def before_wave(
    spec: DrainSpec, stopping: Iterable[str], starting: Iterable[str], later: Iterable[str]
) -> Drained | None:
    """Before a restart wave (process names): the processes it stops are drained; those it starts
    and those later waves start (new workers: in this run's file, not running yet) are down too,
    so nginx never tries them before they run.

    A wave that stops nothing while the file is the managed one does nothing: nginx has not been
    reloaded by this run, so it does not route to this run's new workers yet (the reload after
    the waves brings them in, running).
    """
    stopping = list(stopping)
    if not stopping and _read(spec.path) == _managed(spec):
        return None
    return route(spec, [*stopping, *starting, *later], stopping)


def while_ready(
    spec: DrainSpec, restarting: Iterable[str], starting: Iterable[str], later: Iterable[str]
) -> None:
    """Some processes of a wave are ready: only those not ready yet (``restarting``, and the new
    ``starting``) and those later waves start stay down; each process is back in nginx as soon
    as it is ready, not when its whole wave is. Nothing to do if no wave drained anything yet.
    Rewrites and reloads only when the file changes."""
    live = _read(spec.path)
    if live != _managed(spec, live):
        restarting = list(restarting)
        route(spec, [*restarting, *starting, *later], restarting=restarting)


def after_wave(spec: DrainSpec, later: Iterable[str]) -> None:
    """After a wave is ready: only the processes later waves start stay down (none: the managed
    file back). Nothing to do if no wave drained anything yet."""
    while_ready(spec, (), (), later)


def process_name(unit: str) -> str | None:
    """``matrix-synapse.service`` -> ``main``, a worker's unit -> its name, else None."""
    return units.MAIN if unit == units.MAIN_UNIT else units.worker_name(unit)


def reload_unit(spec: DrainSpec) -> None:
    """``systemctl reload`` nginx's unit; return once its master runs new worker processes. An
    nginx that is not running routes nothing: no reload (the file is put back all the same)."""
    shown = _run(["systemctl", "show", "--property=MainPID", "--value", spec.unit])
    pid = int(shown.stdout.strip() or 0)
    if pid > 0:
        wait_for_new_workers(pid, lambda: _run(["systemctl", "reload", spec.unit]))


def wait_for_new_workers(master: int, reload: Callable[[], object]) -> None:
    """Run ``reload`` and wait until nginx's ``master`` runs a worker process it did not have
    before and every old worker process is shutting down (nginx signals them 100 ms after
    starting the new ones): from then on no worker picks a server by the old file."""
    before = _children(master)
    reload()
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while not (_children(master) - before) or any(map(_still_accepting, before)):
        if time.monotonic() > deadline:
            raise DrainError(f"nginx (pid {master}) did not reload within {RELOAD_TIMEOUT}s")
        time.sleep(POLL_SECONDS)
    time.sleep(POLL_SECONDS)  # its title changes just before it closes its listening sockets


def connections_to(addresses: set[tuple[str, int]]) -> int:
    """Established TCP connections on this host whose remote end is one of ``addresses``."""
    return sum(
        fields[3] == ESTABLISHED and _proc_address(fields[2], family) in addresses
        for fields, family in _tcp_rows()
    )


def _tcp_rows() -> list[tuple[list[str], int]]:
    """The rows of /proc/net/tcp and tcp6, split, with their address family."""
    rows = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                rows += [(row.split(), family) for row in f.read().splitlines()[1:]]
        except FileNotFoundError:  # no IPv6
            continue
    return rows


def _wait_closed(addresses: set[tuple[str, int]], grace: float) -> tuple[float, int]:
    """Wait until no connection to ``addresses`` is open, at most ``grace`` seconds; how long
    it waited and how many were still open."""
    start = time.monotonic()
    open_now = connections_to(addresses) if addresses else 0
    while open_now and time.monotonic() - start < grace:
        time.sleep(POLL_SECONDS)
        open_now = connections_to(addresses)
    return time.monotonic() - start, open_now


# --- Helpers ----------------------------------------------------------------------------------


def _managed(spec: DrainSpec, live: str | None = None) -> str:
    """The managed content, from the live file (drained or not); DrainError if it is not."""
    base = undrained(_read(spec.path) if live is None else live)
    if hashlib.sha256(base.encode()).hexdigest() != spec.sha256:
        raise DrainError(
            f"{spec.path} is not the routing file this deploy manages (changed since?): "
            "not draining through it; run the deploy again"
        )
    return base


def _rewrite(spec: DrainSpec, text: str, restore: str, reload: Callable[[DrainSpec], None]) -> None:
    """Write ``text`` over the live file, check it and reload nginx; on a failure put
    ``restore`` back and raise."""
    st = os.stat(spec.path)
    write_atomically(spec.path, text.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
    try:
        check = subprocess.run(spec.check, shell=True, capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise DrainError(f"{spec.check} refused {spec.path}: {check.stderr.strip()}")
        reload(spec)
    except (ApplyError, OSError) as error:
        write_atomically(spec.path, restore.encode(), st.st_mode & 0o7777, st.st_uid, st.st_gid)
        raise DrainError(str(error)) from None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as error:
        raise DrainError(f"cannot read {path}: {error.strerror or error}") from None


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DrainError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        raise DrainError(f"nginx's master process {pid} is gone") from None


def _still_accepting(pid: int) -> bool:
    """An nginx worker process that is not shutting down (its title says so)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "worker process" in title and "shutting down" not in title


def _socket_address(address: str) -> tuple[str, int]:
    """``host:port`` as nginx's file has it (IPv6 in brackets) -> (normalized ip, port)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_ntop(family, socket.inet_pton(family, host)), int(port)


def _proc_address(field: str, family: int) -> tuple[str, int]:
    """``0100007F:1F90`` (/proc/net/tcp: 32-bit words in host byte order) -> (ip, port)."""
    hex_ip, _, hex_port = field.partition(":")
    raw = bytes.fromhex(hex_ip)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw), int(hex_port, 16)
