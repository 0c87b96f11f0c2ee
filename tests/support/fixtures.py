"""pytest fixtures for throwaway systemd test hosts (see tests/support/testhost.py).

Register with ``pytest_plugins = ["tests.support.fixtures"]`` in tests/conftest.py, then::

    def test_deploy(testhost):                    # a fresh booted host per test
        testhost.ssh("systemctl is-system-running")

    def test_cluster(testhost_factory):
        main, worker = testhost_factory(2)        # N fresh hosts, all stopped at teardown

    def test_federation(bridged_testhosts):       # hosts on one private bridge, by name
        a, b = bridged_testhosts(2, names=["hs-a.test", "hs-b.test"])
        b.ssh("getent hosts hs-a.test")           # a.address; a's machine name resolves too

These fixtures fail (they do not skip) when the machine cannot run test hosts, so a broken
setup never passes silently.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.testhost import (
    BridgeNetwork,
    TestHost,
    ensure_base_tree,
    missing_prerequisites,
    reap_stale,
)

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


@pytest.fixture
def bridged_testhosts(base_tree: Path) -> Iterator[Callable[..., list[TestHost]]]:
    """Callable ``factory(count, names=None, tree=None) -> list[TestHost]``: `count` fresh hosts
    joined to a new private bridge network (tests/support/testhost_net.py), each reachable from
    the others at ``host.address`` and by its machine name and ``names[i]`` (a DNS name such as
    ``hs-a.test``, or a list of them). `tree` is one tree for all or a list with one per host
    (None: the base tree).
    Each call makes its own network; hosts and networks are removed at teardown.
    """
    hosts: list[TestHost] = []
    networks: list[BridgeNetwork] = []

    def factory(
        count: int,
        names: Sequence[str | Sequence[str] | None] | None = None,
        tree: Path | Sequence[Path | None] | None = None,
    ) -> list[TestHost]:
        names = list(names) if names is not None else [None] * count
        trees = list(tree) if isinstance(tree, Sequence) else [tree] * count
        if len(names) != count or len(trees) != count:
            raise ValueError(f"{count} hosts need {count} names and trees: {names}, {trees}")
        network = BridgeNetwork.create(keep=True)  # kept until teardown, even between hosts
        networks.append(network)
        started = []
        for name, host_tree in zip(names, trees, strict=True):
            host = TestHost.start(
                unique_host_name(),
                host_tree or base_tree,
                network=network,
                aliases=[name] if isinstance(name, str) else list(name or []),
            )
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
    for network in networks:
        try:
            network.close()
        except Exception as exc:
            errors.append(f"{network.bridge}: {exc}")
    if errors:
        pytest.fail("could not stop bridged test hosts:\n" + "\n".join(errors), pytrace=False)
