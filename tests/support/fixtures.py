"""pytest fixtures for throwaway systemd test hosts (see tests/support/testhost.py).

Register with ``pytest_plugins = ["tests.support.fixtures"]`` in tests/conftest.py, then::

    def test_deploy(testhost):                    # a fresh booted host per test
        testhost.ssh("systemctl is-system-running")

    def test_cluster(testhost_factory):
        main, worker = testhost_factory(2)        # N fresh hosts, all stopped at teardown

These fixtures fail (they do not skip) when the machine cannot run test hosts, so a broken
setup never passes silently.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.testhost import TestHost, ensure_base_tree, missing_prerequisites, reap_stale

_counter = itertools.count(1)


def unique_host_name(prefix: str = "th") -> str:
    """Unique across concurrent pytest processes (pid) and within one (counter)."""
    return f"{prefix}{os.getpid()}-{next(_counter)}"


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def base_tree() -> Path:
    """The cached base rootfs; builds it on first use (about 50 s)."""
    if problems := missing_prerequisites():
        pytest.fail("cannot run test hosts: " + "; ".join(problems), pytrace=False)
    reap_stale()
    # SIGTERM (e.g. a CI timeout) would skip teardown and atexit; make it behave like Ctrl-C.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    return ensure_base_tree()


@pytest.fixture
def testhost_factory(base_tree: Path) -> Iterator[Callable[..., list[TestHost]]]:
    """Callable ``factory(count=1, tree=None) -> list[TestHost]`` booting fresh hosts."""
    hosts: list[TestHost] = []

    def factory(count: int = 1, tree: Path | None = None) -> list[TestHost]:
        started = []
        for _ in range(count):
            host = TestHost.start(unique_host_name(), tree or base_tree)
            hosts.append(host)
            started.append(host)
        return started

    yield factory
    errors = []
    for host in reversed(hosts):
        try:
            host.stop()
        except Exception as exc:  # stop the others anyway, then report
            errors.append(f"{host.name}: {exc}")
    if errors:
        pytest.fail("could not stop test hosts:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def testhost(testhost_factory: Callable[..., list[TestHost]]) -> TestHost:
    """A fresh booted host from the base tree, stopped after the test."""
    return testhost_factory(1)[0]
