"""Private bridge networks for test hosts that must talk to each other (opt-in).

A `BridgeNetwork` is a Linux bridge ``psyn-brN`` with no address on this machine: hosts joined to
it (``TestHost.start(..., network=net)``, systemd-nspawn ``--network-bridge``) get a veth
``host0`` with a static ``10.213.N.H/24`` and no other route, and nothing routes or NATs off the
bridge (this machine has no address on it, so it neither routes for it nor answers on it). Names
resolve through a small DNS server (``testhost_dns.py``) at ``10.213.N.1`` that runs in the
network's own namespace (``ip netns`` ``psyn-brN``) and knows only the network's hosts: each by
its machine name and its aliases (e.g. ``hs-a.test``). Each guest's /etc/resolv.conf points there
(a read-only bind mount: the overlay is volatile and the network's names change as hosts join).

The bridge, the name server and the namespace go away with `close()`, which runs when the last
host leaves (``TestHost.stop``) unless the network was created with ``keep=True``. Networks left
by a killed process are removed by ``python -m tests.support.testhost cleanup`` (`reap_stale`):
their state file (``<run root>/.networks/psyn-brN.json``) names an owner that no longer runs.

Part of the test-host harness (``tests/support/testhost.py`` is the entry point).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.testhost_cgroups import (
    _kill_cgroup_leftovers,
    _proc_start_time,
    _remove_cgroups,
    _spawn_in_cgroup,
    _stop_process_group,
)
from tests.support.testhost_env import TestHostError, _run, run_root

log = logging.getLogger(__name__)

BRIDGE_PREFIX = "psyn-br"
SUBNET_PREFIX = "10.213"
MAX_NETWORKS = 256
DNS_SERVER = Path(__file__).with_name("testhost_dns.py")
GUEST_IFACE = "host0"  # systemd-nspawn's name for the guest end of --network-bridge's veth


_LIVE: set[BridgeNetwork] = set()


def networks_dir() -> Path:
    return run_root() / ".networks"


@contextlib.contextmanager
def _networks_lock() -> Iterator[None]:
    """Serialises allocation and reaping across processes (both read links and state files)."""
    networks_dir().mkdir(parents=True, exist_ok=True)
    with open(networks_dir() / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


class BridgeNetwork:
    """One private bridge with its name server. Create with `BridgeNetwork.create()`."""

    def __init__(self, index: int, keep: bool = False) -> None:
        self.index = index
        self.bridge = f"{BRIDGE_PREFIX}{index}"
        self.subnet = f"{SUBNET_PREFIX}.{index}.0/24"
        self.dns_address = f"{SUBNET_PREFIX}.{index}.1"
        self.keep = keep
        self.members: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (address, aliases)
        self._used: set[int] = set()
        self._dns: subprocess.Popen[bytes] | None = None
        self._closed = False

    # ----- public API

    @classmethod
    def create(cls, keep: bool = False) -> BridgeNetwork:
        """Make a new bridge, namespace and name server on the first free ``psyn-brN``."""
        with _networks_lock():
            for index in range(MAX_NETWORKS):
                name = f"{BRIDGE_PREFIX}{index}"
                if not (_link_exists(name) or (networks_dir() / f"{name}.json").exists()):
                    break
            else:
                raise TestHostError(f"no free {BRIDGE_PREFIX}N (all {MAX_NETWORKS} in use)")
            network = cls(index, keep)
            _LIVE.add(network)
            # State first: a crash after this point leaves something `reap_stale` can find.
            network._write_state()
        try:
            network._setup()
        except BaseException:
            network.close()
            raise
        return network

    @property
    def hosts_file(self) -> Path:
        return networks_dir() / f"{self.bridge}.hosts"

    @property
    def resolv_conf(self) -> Path:
        return networks_dir() / f"{self.bridge}.resolv.conf"

    @property
    def dns_pid(self) -> int | None:
        return self._dns.pid if self._dns else None

    def address_of(self, name: str) -> str:
        return self.members[name][0]

    def nspawn_options(self) -> list[str]:
        """systemd-nspawn options joining a guest to this network (instead of --private-network)."""
        return [f"--network-bridge={self.bridge}", f"--bind-ro={self.resolv_conf}:/etc/resolv.conf"]

    def attach(
        self, name: str, guest_pid: int, aliases: Sequence[str] = (), deadline: float = 0
    ) -> str:
        """Give the booting guest `name` its address and publish its names; returns the address."""
        if self._closed:
            raise TestHostError(f"network {self.bridge} is closed")
        host_part = next(h for h in range(2, 255) if h not in self._used)  # .1 is the DNS server
        address = f"{SUBNET_PREFIX}.{self.index}.{host_part}"
        self._used.add(host_part)
        self.members[name] = (address, tuple(aliases))
        deadline = deadline or time.monotonic() + 10
        # nspawn moves host0 into the guest's namespace while the guest's PID 1 already exists.
        nsenter = ["nsenter", "-t", str(guest_pid), "-n", "ip"]
        while not self._run_ok([*nsenter, "link", "show", GUEST_IFACE]):
            if time.monotonic() > deadline:
                raise TestHostError(f"{name}: {GUEST_IFACE} did not appear in the guest")
            time.sleep(0.02)
        _run([*nsenter, "addr", "add", f"{address}/24", "dev", GUEST_IFACE])
        _run([*nsenter, "link", "set", GUEST_IFACE, "up"])
        self._write_hosts()
        return address

    def detach(self, name: str) -> None:
        """Forget `name` (its veth went away with the guest); close after the last host."""
        if name in self.members:
            address, _ = self.members.pop(name)
            self._used.discard(int(address.rsplit(".", 1)[1]))
            if not self._closed:
                self._write_hosts()
        if not self.members and not self.keep:
            self.close()

    def close(self) -> None:
        """Stop the name server, delete the namespace and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self._dns is not None:
            _stop_process_group(self._dns, self._dns_cgroup)
            self._dns = None
        with _networks_lock():
            _teardown(self.bridge)

    def __enter__(self) -> BridgeNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BridgeNetwork {self.bridge} {self.subnet} hosts={sorted(self.members)}>"

    # ----- setup

    @property
    def _dns_cgroup(self) -> str:
        return f"{self.bridge}-dns"

    def _setup(self) -> None:
        bridge, netns, veth = self.bridge, self.bridge, f"{self.bridge}-d"
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        # No address here, IPv4 or IPv6 link-local: the guests cannot reach this machine.
        Path(f"/proc/sys/net/ipv6/conf/{bridge}/disable_ipv6").write_text("1\n")
        _run(["ip", "link", "set", bridge, "up"])
        _run(["ip", "netns", "add", netns])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "link", "set", veth, "master", bridge, "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{self.dns_address}/24", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        self._write_hosts()
        self.resolv_conf.write_text(
            f"# test-host network {self.bridge}\nnameserver {self.dns_address}\n"
            "options timeout:1 attempts:2\n"
        )
        self._start_dns()
        self._write_state()

    def _start_dns(self) -> None:
        cmd = [
            "nsenter",
            f"--net=/run/netns/{self.bridge}",
            sys.executable,
            str(DNS_SERVER),
            str(self.hosts_file),
            self.dns_address,
        ]
        log_path = networks_dir() / f"{self.bridge}.dns.log"
        with open(log_path, "ab") as dns_log:
            self._dns = _spawn_in_cgroup(
                self._dns_cgroup, cmd, stdout=dns_log, stderr=subprocess.STDOUT
            )
        # sh -> nsenter -> python all exec in place: the PID's /proc/net is the namespace's.
        wanted = f"{_hex_address(self.dns_address)}:0035"
        deadline = time.monotonic() + 10
        while self._dns.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                udp = Path(f"/proc/{self._dns.pid}/net/udp").read_text()
                if any(line.split()[1] == wanted for line in udp.splitlines()[1:]):
                    return
            time.sleep(0.02)
        raise TestHostError(f"{self.bridge}: name server did not start: {log_path.read_text()}")

    def _write_hosts(self) -> None:
        lines = [
            f"{address} {name} {' '.join(aliases)}\n"
            for name, (address, aliases) in sorted(self.members.items())
        ]
        tmp = self.hosts_file.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.rename(self.hosts_file)

    def _write_state(self) -> None:
        state = {
            "bridge": self.bridge,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "dns_pid": self.dns_pid,
        }
        (networks_dir() / f"{self.bridge}.json").write_text(json.dumps(state))

    @staticmethod
    def _run_ok(cmd: list[str]) -> bool:
        return subprocess.run(cmd, capture_output=True).returncode == 0


def _hex_address(address: str) -> str:
    """127.0.0.1 -> 0100007F, as /proc/net/udp writes it (little-endian on x86)."""
    return "".join(f"{int(part):02X}" for part in reversed(address.split(".")))


def _teardown(bridge: str) -> None:
    """Remove everything of network `bridge` that exists (caller holds the networks lock)."""
    _kill_cgroup_leftovers(f"{bridge}-dns")
    _remove_cgroups(f"{bridge}-dns")
    # The veth first (both ends go at once): a deleted namespace frees its links only later.
    if _link_exists(f"{bridge}-d"):
        _run(["ip", "link", "del", f"{bridge}-d"])
    if Path("/run/netns", bridge).exists():
        _run(["ip", "netns", "del", bridge])
    if _link_exists(bridge):
        _run(["ip", "link", "del", bridge])
    for suffix in (".json", ".hosts", ".resolv.conf", ".dns.log", ".tmp"):
        (networks_dir() / f"{bridge}{suffix}").unlink(missing_ok=True)


@atexit.register
def _close_all() -> None:
    """Registered before testhost.py's hook (imported first): atexit runs it after that one."""
    for network in list(_LIVE):
        try:
            network.close()
        except Exception:
            log.exception("could not remove %s", network)


def reap_stale_networks() -> list[str]:
    """Remove networks whose owner died, and ``psyn-br*`` bridges nobody recorded."""
    reaped = []
    with _networks_lock():
        for state_file in networks_dir().glob(f"{BRIDGE_PREFIX}*.json"):
            state: dict[str, Any] = {}
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_file.read_text())
            owner = state.get("owner_pid")
            if owner and _proc_start_time(int(owner)) == state.get("owner_start"):
                continue
            bridge = state_file.stem
            _teardown(bridge)
            reaped.append(bridge)
        # A state file is written before the bridge is created (under this lock), so a bridge
        # without one was left by a process killed while tearing down.
        for link in Path("/sys/class/net").glob(f"{BRIDGE_PREFIX}*"):
            name = link.name
            if (
                name.removeprefix(BRIDGE_PREFIX).isdigit()
                and not (networks_dir() / f"{name}.json").exists()
            ):
                _teardown(name)
                reaped.append(name)
    return reaped
