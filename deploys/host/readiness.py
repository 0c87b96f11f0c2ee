"""Wait until the units a restart wave (re)started are ready, each by its own criterion, and, at
the end of a run, until Redis counts every process subscribed. Standard library only."""

from __future__ import annotations

import time
from collections.abc import Callable

from . import units
from .batch import ApplyError
from .manifest import Readiness, RedisCheck
from .systemd import failure_report, list_units


def wait_until_ready(
    unit_names: list[str],
    readiness: Readiness,
    redis: bool = False,
    on_ready: Callable[[list[str]], None] | None = None,
) -> None:
    """Wait until each unit is ready by its own criterion (``unit_not_ready``) and, with
    ``redis``, until Redis counts every planned process subscribed. ``host/apply.py`` waits
    per wave without Redis (during a scale-up the new workers are not all started yet) and
    once at the end of the run with it, when a Synapse process was (re)started.

    ``on_ready`` is called with the units still not ready after each poll (every 0.5 s) that
    found one or more newly ready: at most once per poll and once per unit."""
    timeout = readiness.timeout
    redis_check = readiness.redis if redis else None
    if (not unit_names and redis_check is None) or not timeout:
        return
    deadline = time.monotonic() + timeout
    waiting: dict[str, str] = dict.fromkeys(unit_names, "not checked")
    redis_problem = "not checked" if redis_check else None
    while True:
        if waiting:
            states = list_units(sorted(waiting))  # these units by name, nginx included
            count = len(waiting)
            for unit in sorted(waiting):
                problem = unit_not_ready(unit, states.get(unit), readiness)
                if problem is None:
                    del waiting[unit]
                else:
                    waiting[unit] = problem
            if on_ready is not None and len(waiting) < count:
                on_ready(sorted(waiting))
        if redis_check is not None and redis_problem is not None:
            redis_problem = redis_not_ready(redis_check)
        if not waiting and redis_problem is None:
            return
        if time.monotonic() >= deadline:
            problems = [f"{unit}: {problem}" for unit, problem in sorted(waiting.items())]
            problems += [redis_problem] if redis_problem else []
            raise ApplyError(
                f"not ready after {timeout} s (matrix_synapse_readiness_timeout): "
                + "; ".join(problems)
                + "\n"
                + failure_report(sorted(waiting), every=True)
            )
        time.sleep(0.5)


def is_synapse(unit: str) -> bool:
    return unit == units.MAIN_UNIT or units.worker_name(unit) is not None


def unit_not_ready(unit: str, state: tuple[str, str] | None, readiness: Readiness) -> str | None:
    """Why ``unit`` is not ready yet, or None. ``state`` is its (load, active) state. Every unit
    must be active; a Synapse process must also answer /health on an address its listener binds
    (``readiness.health``); another unit with a listen address (nginx) must accept a TCP
    connection on it (``readiness.reachable``)."""
    active = state[1] if state else "not loaded"
    if active != "active":
        return f"is {active}"
    url = readiness.health.get(unit)
    if url:
        return http_problem(url)
    address = readiness.reachable.get(unit)
    if address:
        return tcp_problem(address[0], address[1])
    return None


def http_problem(url: str) -> str | None:
    """None if ``GET url`` answers 200, else what happened."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=2) as response:
            if response.status == 200:
                return None
            return f"GET {url} answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"GET {url} answered {error.code}"
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return f"GET {url} failed: {reason}"


def tcp_problem(host: str, port: int) -> str | None:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as error:
        return f"nothing accepts connections on {host}:{port}: {error.strerror or error}"


def redis_where(redis: RedisCheck) -> str:
    return redis.path if redis.path else f"{redis.host}:{redis.port}"


def redis_not_ready(redis: RedisCheck) -> str | None:
    """None once Redis counts every planned process subscribed; else why not."""
    try:
        count = redis_subscribers(redis)
    except (OSError, ValueError) as error:
        return f"cannot reach Redis at {redis_where(redis)}: {error}"
    if count < redis.subscribers:
        return (
            f"Redis at {redis_where(redis)}: {count} of {redis.subscribers} processes "
            f"subscribed to {redis.channel!r}"
        )
    return None


def redis_subscribers(redis: RedisCheck) -> int:
    """``PUBSUB NUMSUB <channel>`` over a raw socket (no redis-cli needed). Raises OSError when
    Redis cannot be reached, ValueError on an answer that is not a count."""
    import socket

    channel = redis.channel.encode()
    request = b"*3\r\n$6\r\nPUBSUB\r\n$6\r\nNUMSUB\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    if redis.password_path:  # AUTH first, pipelined: "+OK" then the count
        with open(redis.password_path, "rb") as stream:
            password = stream.read().strip()
        request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password) + request
    if redis.path:
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(2)
        try:
            conn.connect(redis.path)
        except OSError:
            conn.close()
            raise
    else:
        conn = socket.create_connection((redis.host, redis.port), timeout=2)
    with conn:
        conn.sendall(request)
        reply = b""
        while not any(line.startswith((b":", b"-")) for line in reply.split(b"\r\n")[:-1]):
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    # Reply: *2 / $<len> / <channel> / :<count>; an error: -<message>
    lines = reply.split(b"\r\n")
    errors = [line[1:].decode(errors="replace") for line in lines if line.startswith(b"-")]
    if errors:
        raise ValueError(f"Redis answered an error: {errors[0]}")
    counts = [line for line in lines if line.startswith(b":")]
    if not counts:
        raise ValueError(f"unexpected answer to PUBSUB NUMSUB: {reply[:200]!r}")
    return int(counts[0][1:])
