"""Draining a worker out of a real nginx (deploys/host/drain.py) while requests are in flight.

The rendered file, nginx and stubs of tests/nginx/test_nginx_real.py; the drain runs the real
``nginx -t`` on that file and reloads the real master (SIGHUP, as ``systemctl reload`` does),
waiting for its new worker processes like ``reload_unit``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from deploys.host.drain import drain, undrain, wait_for_new_workers
from deploys.host.manifest import DrainSpec
from tests.nginx.test_nginx_real import Answer, Nginx, nginx_command, running_nginx
from tests.nginx.test_restarts import SYNC, TWO_GENERIC, as_user

GRACE = 10.0


def spec_for(nginx: Nginx, tmp: Path) -> DrainSpec:
    return DrainSpec(
        path=str(nginx.site),
        sha256=hashlib.sha256(nginx.site.read_bytes()).hexdigest(),
        grace=GRACE,
        unit="nginx.service",  # not used: the reload is the master's SIGHUP
        check=shlex.join(nginx_command(tmp, nginx.conf, "-t", "-q")),
    )


def sighup(nginx: Nginx, then: Callable[[], None] = lambda: None) -> Callable[[DrainSpec], None]:
    def reload(_: DrainSpec) -> None:
        wait_for_new_workers(nginx.pid, lambda: os.kill(nginx.pid, signal.SIGHUP))
        then()

    return reload


def users_on(nginx: Nginx, process: str) -> list[str]:
    users = [f"user{i}" for i in range(40)]
    return [u for u in users if as_user(nginx, "GET", SYNC, u).process == process]


class Prober(threading.Thread):
    """Sends GETs as ``users`` in a loop until stopped; keeps every answer."""

    def __init__(self, nginx: Nginx, users: list[str]) -> None:
        super().__init__(daemon=True)
        self.nginx, self.users = nginx, users
        self.answers: list[Answer] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for user in self.users:
                self.answers.append(as_user(self.nginx, "GET", SYNC, user))
            time.sleep(0.02)


def test_a_drained_worker_gets_no_new_request_while_its_request_in_flight_completes(
    tmp_path: Path,
) -> None:
    with running_nginx(tmp_path, "generic-only", **TWO_GENERIC) as nginx:
        stubs, spec = nginx.stubs, spec_for(nginx, tmp_path)
        managed = nginx.site.read_bytes()
        on_1 = users_on(nginx, "generic-1")
        assert on_1
        slow: list[tuple[Answer, float]] = []
        arrived = stubs.requests["generic-1"]
        in_flight = threading.Thread(
            target=lambda: slow.append(
                (as_user(nginx, "GET", f"{SYNC}&delay=2", on_1[0]), time.monotonic())
            )
        )
        in_flight.start()
        while stubs.requests["generic-1"] == arrived:  # the slow request is on generic-1
            time.sleep(0.01)
        prober = Prober(nginx, on_1)
        seen: dict[str, int] = {}

        def probe_from_now() -> None:  # the reload took: from here, nothing new on generic-1
            seen["generic-1"] = stubs.requests["generic-1"]
            prober.start()

        started = time.monotonic()
        drained = drain(spec, ["generic-1"], reload=sighup(nginx, probe_from_now))
        returned = time.monotonic()
        prober.stop.set()
        prober.join(10)
        in_flight.join(10)

        ((answer, finished),) = slow
        assert (answer.status, answer.process) == (200, "generic-1")  # not cut, not moved
        assert drained.in_flight == 0 and finished <= returned  # waited for it ...
        assert 1.0 < drained.waited < GRACE and returned - started < GRACE  # ... not the grace
        assert prober.answers and {(a.status, a.process) for a in prober.answers} == {
            (200, "generic-0")
        }
        assert stubs.requests["generic-1"] == seen["generic-1"]

        assert undrain(spec, reload=sighup(nginx))
        assert nginx.site.read_bytes() == managed  # the exact managed file
        assert as_user(nginx, "GET", SYNC, on_1[0]).process == "generic-1"


def test_a_drain_does_not_wait_for_requests_on_other_workers(tmp_path: Path) -> None:
    """nginx's old worker process, still busy elsewhere, closes its idle keepalive connections to
    the drained server: the drain sees no request in flight and returns at once."""
    with running_nginx(tmp_path, "generic-only", **TWO_GENERIC) as nginx:
        spec = spec_for(nginx, tmp_path)
        on_0, on_1 = users_on(nginx, "generic-0"), users_on(nginx, "generic-1")
        assert on_0 and on_1  # both have an idle keepalive connection from nginx now
        slow: list[Answer] = []
        elsewhere = threading.Thread(
            target=lambda: slow.append(as_user(nginx, "GET", f"{SYNC}&delay=3", on_0[0]))
        )
        elsewhere.start()
        time.sleep(0.3)
        drained = drain(spec, ["generic-1"], reload=sighup(nginx))
        assert drained.in_flight == 0 and drained.waited < 1.0
        elsewhere.join(10)
        assert [(a.status, a.process) for a in slow] == [(200, "generic-0")]
        assert undrain(spec, reload=sighup(nginx))


def test_a_request_cut_by_the_stop_after_the_grace_is_retried_once_elsewhere(
    tmp_path: Path,
) -> None:
    """A long poll outlives the grace; its worker stops (the stub dies mid-request, here while it
    still waits): nginx passes the GET to the other worker, and the client sees one 200."""
    with running_nginx(tmp_path, "generic-only", **TWO_GENERIC) as nginx:
        spec = DrainSpec(**{**spec_for(nginx, tmp_path).__dict__, "grace": 0.5})
        stubs = nginx.stubs
        on_1 = users_on(nginx, "generic-1")
        answers: list[Answer] = []
        poll = threading.Thread(
            target=lambda: answers.append(as_user(nginx, "GET", f"{SYNC}&delay=4", on_1[0]))
        )
        before = stubs.requests["generic-0"]
        poll.start()
        time.sleep(0.3)
        drained = drain(spec, ["generic-1"], reload=sighup(nginx))
        assert drained.in_flight == 1  # the grace ended first
        stubs.stop_serving("generic-1")  # the worker stops: its connections close
        poll.join(15)
        assert [(a.status, a.process) for a in answers] == [(200, "generic-0")]
        assert stubs.requests["generic-0"] == before + 1
        undrain(spec, reload=sighup(nginx))
