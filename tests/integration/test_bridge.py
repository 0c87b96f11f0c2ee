"""Test hosts on a private bridge network (tests/support/testhost_net.py): they reach each other
by name, nothing else reaches them or is reached from them, and the harness cleans up.

Run: .venv/bin/pytest tests/integration/test_bridge.py -v
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.testhost import TestHost, reap_stale
from tests.support.testhost_net import BridgeNetwork, networks_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
Factory = Callable[..., list[TestHost]]

# A one-shot TCP server in a guest: answers each connection with its hostname.
SERVE = (
    'systemd-run --unit=hello -p Type=simple python3 -c "import socket; s=socket.socket(); '
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7000)); "
    "s.listen(); [c.sendall(socket.gethostname().encode()) or c.close() "
    'for c in iter(lambda: s.accept()[0], None)]"'
    " && for i in $(seq 50); do ss -Htln 'sport = 7000' | grep -q . && exit 0; sleep 0.1; done;"
    " exit 1"
)


def _fetch(host: TestHost, target: str, timeout: float = 3) -> subprocess.CompletedProcess[str]:
    script = (
        "import socket, sys; c = socket.create_connection((sys.argv[1], 7000), timeout="
        f"{timeout}); print(c.recv(100).decode())"
    )
    return host.ssh(f"python3 -c '{script}' {target}", check=False)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _alive(pid: int | None) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_bridged_hosts_reach_each_other_by_name(bridged_testhosts: Factory) -> None:
    a, b = bridged_testhosts(2, names=["hs-a.test", "hs-b.test"])
    assert a.address != b.address
    assert a.address.startswith("10.213.") and b.address.startswith("10.213.")
    a.ssh(SERVE)
    b.ssh(SERVE)
    for client, server, alias in ((a, b, "hs-b.test"), (b, a, "hs-a.test")):
        for target in (alias, server.name, server.address):
            reply = _fetch(client, target)
            assert reply.returncode == 0, reply.stderr
            assert reply.stdout.strip() == server.name
        resolved = client.ssh(f"getent hosts {alias}").stdout.split()
        assert resolved == [server.address, alias]
    # Names outside the network do not resolve (the name server knows only its hosts).
    assert a.ssh("getent hosts deb.debian.org", check=False).returncode == 2


def test_unbridged_host_cannot_reach_bridged_hosts(
    bridged_testhosts: Factory, testhost: TestHost
) -> None:
    (a,) = bridged_testhosts(1, names=["hs-a.test"])
    a.ssh(SERVE)
    assert _fetch(a, "hs-a.test").stdout.strip() == a.name  # the server answers on the bridge
    assert testhost.ssh("ls /sys/class/net").stdout.split() == ["lo"]
    reply = _fetch(testhost, a.address)
    assert reply.returncode != 0
    assert "Network is unreachable" in reply.stderr
    assert testhost.ssh("getent hosts hs-a.test", check=False).returncode != 0


def test_nothing_routes_off_the_bridge(bridged_testhosts: Factory) -> None:
    (a,) = bridged_testhosts(1)
    network = a.network
    assert network is not None
    assert a.ssh("ip -4 route").stdout.split("\n")[0].split()[:3] == [
        network.subnet,
        "dev",
        "host0",
    ]
    assert len(a.ssh("ip -4 route").stdout.strip().splitlines()) == 1
    assert a.ssh("ip -6 route show default").stdout.strip() == ""
    assert "unreachable" in a.ssh("ip route get 1.1.1.1", check=False).stderr
    # This machine's own address (and so the outside world) is out of reach too.
    route = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    own = route.stdout.split("src")[1].split()[0]
    connect = f"import socket; socket.create_connection(('{own}', 22), 2)"
    assert "Network is unreachable" in a.ssh(f'python3 -c "{connect}"', check=False).stderr
    # No address of this machine on the bridge: it neither routes for nor answers the guests.
    addresses = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", network.bridge], capture_output=True, text=True
    )
    assert addresses.returncode == 0 and addresses.stdout.strip() == ""


def test_srv_lookup_fails_cleanly_so_synapse_falls_back(bridged_testhosts: Factory) -> None:
    """Synapse's SRV resolver (Twisted, not getaddrinfo) gets NXDOMAIN at once, i.e. [] and the
    fallback to the server name on 8448, instead of a 60 s timeout and a failed federation."""
    (a,) = bridged_testhosts(1, names=["hs-a.test"])
    network = a.network
    assert network is not None
    script = f"""
import time
from twisted.internet import defer, reactor
from twisted.names import client
from synapse.http.federation.srv_resolver import SrvResolver
resolver = client.createResolver(resolvconf={str(network.resolv_conf).encode()!r})
result = {{}}
async def lookup():
    started = time.monotonic()
    try:
        servers = await SrvResolver(dns_client=resolver, cache={{}}).resolve_service(
            b"_matrix-fed._tcp.hs-a.test"
        )
        result["servers"] = [str(s) for s in servers]
    except Exception as exc:
        result["error"] = repr(exc)
    result["seconds"] = time.monotonic() - started
    try:
        result["address"] = await resolver.getHostByName("hs-a.test")
    except Exception as exc:
        result["address"] = repr(exc)
    reactor.stop()
reactor.callWhenRunning(lambda: defer.ensureDeferred(lookup()))
reactor.run()
print(__import__("json").dumps(result))
"""
    # Run where the guests are: in the network's namespace (this machine has no route to it).
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{network.bridge}", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result.get("servers") == [], result
    assert result["address"] == a.address
    assert result["seconds"] < 2, result


def test_name_server_answers(bridged_testhosts: Factory) -> None:
    a, b = bridged_testhosts(2, names=["hs-a.test", "hs-b.test"])
    assert a.network is not None
    server = (a.network.dns_address, 53)

    def query(name: str, qtype: int) -> tuple[int, bytes]:
        question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        packet = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question
        packet += struct.pack("!HH", qtype, 1)
        script = (
            "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.settimeout(2); s.sendto(bytes.fromhex(sys.argv[1]), {server!r}); "
            "print(s.recv(512).hex())"
        )
        reply = bytes.fromhex(b.ssh(f'python3 -c "{script}" {packet.hex()}').stdout.strip())
        ident, flags, _, ancount = struct.unpack("!HHHH", reply[:8])
        assert ident == 0x1234 and flags & 0x8000
        return flags & 0xF, reply[-4:] if ancount else b""

    assert query("hs-a.test", 1) == (0, socket.inet_aton(a.address))
    assert query("HS-A.test", 1) == (0, socket.inet_aton(a.address))
    assert query("hs-a.test", 28) == (0, b"")  # AAAA: the name exists, no IPv6 record
    assert query("_matrix-fed._tcp.hs-a.test", 33) == (3, b"")  # SRV: NXDOMAIN
    assert query("example.org", 1) == (3, b"")


def test_network_removed_with_its_last_host(base_tree: Path) -> None:
    network = BridgeNetwork.create()
    bridge, dns_pid = network.bridge, network.dns_pid
    a = TestHost.start("brtest-last-a", base_tree, network=network)
    b = TestHost.start("brtest-last-b", base_tree, network=network)
    assert _link_exists(bridge) and _alive(dns_pid)
    a.stop()
    assert _link_exists(bridge) and _alive(dns_pid)
    assert b.ssh(f"getent hosts {a.name}", check=False).returncode == 2  # a left the name server
    b.stop()
    assert not _link_exists(bridge)
    assert not _link_exists(f"{bridge}-d")
    assert not Path("/run/netns", bridge).exists()
    assert not _alive(dns_pid)
    assert not list(networks_dir().glob(f"{bridge}.*"))


def test_cleanup_removes_networks_of_killed_processes(base_tree: Path) -> None:
    script = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
from tests.support.testhost import BridgeNetwork, TestHost
network = BridgeNetwork.create()
host = TestHost.start("brtest-orphan", network=network)
print(json.dumps({{"bridge": network.bridge, "dns_pid": network.dns_pid,
                   "guest_pid": host.guest_pid}}), flush=True)
time.sleep(600)
"""
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert owner.stdout is not None
        info = json.loads(owner.stdout.readline())
    finally:
        owner.send_signal(signal.SIGKILL)  # no atexit, no teardown
        owner.wait()
    bridge = info["bridge"]
    assert _link_exists(bridge) and _alive(info["dns_pid"]) and _alive(info["guest_pid"])
    assert "brtest-orphan" in reap_stale()
    deadline = time.monotonic() + 5
    while _alive(info["dns_pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _link_exists(bridge)
    assert not Path("/run/netns", bridge).exists()
    assert not _alive(info["dns_pid"]) and not _alive(info["guest_pid"])
    assert not list(networks_dir().glob(f"{bridge}.*"))
