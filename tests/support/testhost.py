"""Throwaway systemd test hosts for deploy tests (debootstrap + systemd-nspawn).

Each `TestHost` is a real Debian bookworm machine: systemd 252 as PID 1, sshd, python3 and
sudo, booted with ``systemd-nspawn --volatile=overlay`` on top of a cached, read-only tree. Every
boot starts pristine, any number of hosts can share one tree, and each host has a private network
(only its own ``lo``), so services in different hosts may use the same ports. The guest's sshd is
reached through a socat bridge on a free ``127.0.0.1`` port. Root logs in with the tree's key, and
so does ``deploy``, which has passwordless sudo (for pyinfra ``_sudo`` deploys).

Hosts that must talk to each other join a private bridge instead (opt-in, ``network=``): each
gets an address on ``10.213.N.0/24`` and resolves the others by name, with no route off the
bridge (``testhost_net.py``; fixture ``bridged_testhosts``).

The harness is these modules: this one (``TestHost``: boot, ssh, stop, reap; the CLI),
``testhost_trees.py`` (the cached trees and their recipes), ``testhost_cgroups.py`` (cgroups,
processes, ports, prerequisites), ``testhost_env.py`` (directories, errors, the Debian mirror),
``testhost_net.py`` (bridge networks) and ``testhost_dns.py`` (their name server).

Usage::

    from tests.support.testhost import TestHost, ensure_derived_tree

    with TestHost.start("web1") as host:          # builds the base tree on first use
        host.ssh("systemctl is-system-running")   # CompletedProcess; raises if rc != 0
        host.ssh("sudo -n true", user="deploy")
        name, data = host.inventory_entry()       # pyinfra inventory host tuple
        spec = host.testinfra_spec()              # pytest --hosts=SPEC / testinfra.get_host(SPEC)

    tree = ensure_derived_tree("marker", ["echo hi > /etc/marker"], version="1")
    host = TestHost.start("web2", tree=tree)      # base + your setup commands, cached
    host.stop()

    with BridgeNetwork.create() as net:           # bridge, removed with its last host
        a = TestHost.start("a", network=net, aliases=["hs-a.test"])
        b = TestHost.start("b", network=net)      # b reaches a as hs-a.test or a.address

In pytest, use the fixtures in ``tests/support/fixtures.py`` (``base_tree``, ``testhost``,
``testhost_factory``, ``bridged_testhosts``). From a shell (as root, in the repository root)::

    python -m tests.support.testhost build        # build (or reuse) the cached base tree
    python -m tests.support.testhost boot NAME    # boot, print JSON, run until SIGINT/SIGTERM
    python -m tests.support.testhost cleanup      # stop hosts (and bridges) of killed processes

Needs root, the cgroup mounts under /sys/fs/cgroup (hybrid v1+v2 as on the development VMs;
pure v2 is untested), the Debian packages ``systemd-container debootstrap socat openssh-client
util-linux`` (and ``iproute2`` for bridge networks), and, only to build trees, the Debian mirror
named in /etc/apt/sources.list.d/.

Host names must be unique among running hosts (``[a-z0-9-]``, at most 63 characters): they name
the guest's hostname, its cgroups (``/sys/fs/cgroup/*/testhost/NAME``) and its run directory.

Environment variables:

- ``PYINFRA_SYNAPSE_CACHE``: tree cache (default ``/var/cache/pyinfra-synapse``). An entry is
  ``<name>@<version>/{rootfs,id_ed25519,id_ed25519.pub}``. Bump `BASE_VERSION` (in
  ``testhost_trees.py``) when the recipe
  changes; building a new version prunes older ones unless a running host uses them.
- ``PYINFRA_SYNAPSE_RUN``: run files (default ``/run/pyinfra-synapse/NAME``): console.log,
  bridge.log, ssh_config, state.json and ssh control sockets. Removed on stop.
- ``PYINFRA_SYNAPSE_MIRROR``: overrides the Debian mirror URL.

Timings on the 2-vCPU Firecracker development VM:

- base tree build (debootstrap, once per `BASE_VERSION`): 46-52 s; 156 MB, 6,600 files;
- derived tree: 3-6 s plus the commands (copying is bound by file creation, ~0.5 ms per file);
- ``TestHost.start`` until ssh works and is-system-running says running: 0.5 s;
- ``stop()`` (orderly guest poweroff): 0.12-0.18 s;
- ``ssh()``: 0.2 s for the first command, then 0.04 s (OpenSSH connection sharing).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.testhost_cgroups import (
    _cgroup_dirs,
    _cgroup_pids,
    _free_port,
    _kill_cgroup_leftovers,
    _listening,
    _proc_start_time,
    _remove_cgroups,
    _signal,
    _spawn_in_cgroup,
    _states,
    _stop_process_group,
    _wait_gone,
    missing_prerequisites,
)
from tests.support.testhost_env import (
    _NAME_RE,
    BOOT_TIMEOUT,
    STOP_TIMEOUT,
    SSHCommandError,
    TestHostError,
    cache_dir,
    run_root,
)
from tests.support.testhost_net import BridgeNetwork, reap_stale_networks
from tests.support.testhost_trees import ensure_base_tree, ensure_derived_tree, key_for_tree

log = logging.getLogger(__name__)


# What the harness offers (the fixtures and tests import these from here).
__all__ = [
    "BridgeNetwork",
    "SSHCommandError",
    "TestHost",
    "TestHostError",
    "_listening",
    "cache_dir",
    "ensure_base_tree",
    "ensure_derived_tree",
    "key_for_tree",
    "missing_prerequisites",
    "reap_stale",
]

# --------------------------------------------------------------------------- test hosts

_LIVE: set[TestHost] = set()


class TestHost:
    """One booted guest. Create with `TestHost.start`; stop with `stop()` or a `with` block."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        name: str,
        tree: Path,
        network: BridgeNetwork | None = None,
        aliases: Sequence[str] = (),
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid host name {name!r}: use [a-z0-9-], at most 63 characters")
        self.name = name
        self.tree = tree
        self.network = network
        self.aliases = tuple(aliases)
        self.address: str | None = None  # on `network`; None for a host with only its own lo
        self.key_path = key_for_tree(tree)
        self.run_dir = run_root() / name
        self.port = 0
        self.guest_pid: int | None = None  # the guest's systemd (PID 1 inside)
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._bridge: subprocess.Popen[bytes] | None = None
        self._forwards: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._claimed = False  # True once the name's cgroups and run dir are ours to clean up

    # ----- public API

    @classmethod
    def start(
        cls,
        name: str,
        tree: Path | None = None,
        timeout: float = BOOT_TIMEOUT,
        network: BridgeNetwork | None = None,
        aliases: Sequence[str] = (),
    ) -> TestHost:
        """Boot a fresh host from `tree` (default: the base tree) and wait until it is running.

        With `network`, the host also joins that private bridge (see testhost_net.py): it gets
        `address` there, and every host of the network resolves its `name` and `aliases`.
        """
        host = cls(name, tree or ensure_base_tree(), network, aliases)
        if not host.key_path.is_file():
            raise TestHostError(f"no ssh key {host.key_path} next to tree {host.tree}")
        try:
            host._boot(time.monotonic() + timeout)
        except BaseException:
            try:
                host.stop()
            except Exception:  # keep the boot error; the cleanup error only goes to the log
                log.exception("cleanup after failed boot of %s failed", name)
            raise
        return host

    @property
    def nspawn_pid(self) -> int | None:
        return self._nspawn.pid if self._nspawn else None

    @property
    def bridge_pid(self) -> int | None:
        return self._bridge.pid if self._bridge else None

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def ssh_config(self) -> Path:
        return self.run_dir / "ssh_config"

    @property
    def cgroup_dirs(self) -> list[Path]:
        return _cgroup_dirs(self.name)

    def ssh(
        self,
        cmd: str,
        user: str = "root",
        check: bool = True,
        timeout: float | None = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` through the remote user's shell; raise SSHCommandError if check and rc != 0."""
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key_path),
            "-p",
            str(self.port),
            "-l",
            user,
        ]
        argv += [f"-o{k}={v}" for k, v in self._ssh_options().items()]
        # Either input or stdin, never both (subprocess.run refuses input with any stdin=).
        feed: dict[str, Any] = {"stdin": subprocess.DEVNULL} if input is None else {"input": input}
        proc = subprocess.run(
            [*argv, "127.0.0.1", cmd], capture_output=True, text=True, timeout=timeout, **feed
        )
        if check and proc.returncode != 0:
            raise SSHCommandError(
                proc.returncode, f"ssh {user}@{self.name} {cmd}", proc.stdout, proc.stderr
            )
        return proc

    def inventory_entry(self, user: str = "root") -> tuple[str, dict[str, Any]]:
        """A pyinfra inventory host: ``hosts = [host.inventory_entry()]``."""
        return self.name, {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": self.port,
            "ssh_user": user,
            "ssh_key": str(self.key_path),
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
        }

    def testinfra_spec(self, user: str = "root") -> str:
        """Host spec for ``pytest --hosts=SPEC`` or ``testinfra.get_host(SPEC)`` (ssh backend).

        The ``ssh_config`` written to the run dir maps the host name to the bridge port and key.
        """
        return f"ssh://{user}@{self.name}?ssh_config={self.ssh_config}"

    def stop(self) -> None:
        """Shut the guest down and remove its bridge, cgroups and run dir. Idempotent."""
        if not self._claimed:
            return
        try:
            self._close_ssh_masters()
            # Guest first: its sshd closes every bridged connection, so socat reaps its children.
            self._stop_guest()
            self._stop_bridge()
            _kill_cgroup_leftovers(self.name)
            _remove_cgroups(self.name)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._claimed = False
        finally:
            _LIVE.discard(self)
            if self.network is not None:  # the last host to leave removes the bridge
                self.network.detach(self.name)

    def __enter__(self) -> TestHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TestHost {self.name} 127.0.0.1:{self.port} nspawn={self.nspawn_pid}>"

    # ----- boot

    def _boot(self, deadline: float) -> None:
        self._claim()
        _LIVE.add(self)
        self._launch_nspawn()
        self.guest_pid = self._wait_for_guest_init(deadline)
        if self.network is not None:
            self.address = self.network.attach(self.name, self.guest_pid, self.aliases, deadline)
        self._start_bridge()
        self._write_run_files()
        self._wait_for_ssh(deadline)
        self._wait_for_running(deadline)

    def _claim(self) -> None:
        """Refuse a name that is in use; clear what a dead host of the same name left behind."""
        if pids := _cgroup_pids(self.name):
            raise TestHostError(f"host name {self.name!r} is in use (processes {sorted(pids)})")
        _remove_cgroups(self.name)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self._claimed = True

    def _launch_nspawn(self) -> None:
        cmd = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.tree),
            "-M",
            self.name,
            "-b",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--console=read-only",
            *(self.network.nspawn_options() if self.network else ["--private-network"]),
            "--link-journal=no",
            # Each guest is its own machine: the deploy refuses two inventory hosts on one
            # machine-id (the tree's own id would make every guest look like the same machine).
            f"--bind-ro={self._machine_id_file()}:/etc/machine-id",
            # ...and that bind mount must stay: mask the unit that would try to "commit" it.
            "--bind-ro=/dev/null:/etc/systemd/system/systemd-machine-id-commit.service",
        ]
        with open(self.console_log, "wb") as console:
            self._nspawn = _spawn_in_cgroup(
                self.name, cmd, stdout=console, stderr=subprocess.STDOUT
            )

    def _wait_for_guest_init(self, deadline: float) -> int:
        """The guest's PID 1 is the nspawn child whose innermost namespace PID is 1."""
        assert self._nspawn
        while True:
            for pid in self._children(self._nspawn.pid):
                if self._innermost_pid(pid) == 1:
                    return pid
            self._check_alive(deadline, "the guest's PID 1 to appear")
            time.sleep(0.02)

    @staticmethod
    def _children(pid: int) -> list[int]:
        children: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                children += [int(c) for c in (task / "children").read_text().split()]
        return children

    @staticmethod
    def _innermost_pid(pid: int) -> int | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and len(line.split()) > 2:
                    return int(line.split()[-1])
        return None

    def _start_bridge(self) -> None:
        """socat on a free 127.0.0.1 port -> nsenter into the guest netns -> guest port 22."""
        self.port, self._bridge = self._spawn_bridge(22, f"{self.name}/bridge", "bridge.log")

    def forward(self, guest_port: int) -> int:
        """Make the guest's loopback ``guest_port`` reachable on a free 127.0.0.1 port here."""
        port, process = self._spawn_bridge(
            guest_port, f"{self.name}/forward-{guest_port}", f"forward-{guest_port}.log"
        )
        self._forwards.append((f"{self.name}/forward-{guest_port}", process))
        return port

    def _spawn_bridge(
        self, guest_port: int, cgroup: str, log_name: str, attempts: int = 5
    ) -> tuple[int, subprocess.Popen[bytes]]:
        for _ in range(attempts):
            port = _free_port()
            inner = f"nsenter -t {self.guest_pid} -n socat STDIO TCP\\:127.0.0.1\\:{guest_port}"
            cmd = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inner}"]
            with open(self.run_dir / log_name, "ab") as bridge_log:
                process = _spawn_in_cgroup(cgroup, cmd, stdout=bridge_log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 5
            while process.poll() is None and time.monotonic() < deadline:
                if _listening(port):
                    return port, process
                time.sleep(0.01)
            # Lost the race for the port (or socat failed): pick another one.
            _stop_process_group(process, cgroup)
        raise TestHostError(f"socat bridge did not start:\n{self._tail(self.run_dir / log_name)}")

    def _machine_id_file(self) -> Path:
        path = self.run_dir / "machine-id"
        path.write_text(uuid.uuid4().hex + "\n")
        return path

    def _write_run_files(self) -> None:
        options = "".join(f"  {k} {v}\n" for k, v in self._ssh_options().items())
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {self.key_path}\n{options}"
        )
        state = {
            "name": self.name,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "tree": str(self.tree),
            "nspawn_pid": self.nspawn_pid,
            "guest_pid": self.guest_pid,
            "bridge_pid": self.bridge_pid,
            "port": self.port,
            "network": self.network.bridge if self.network else None,
            "address": self.address,
        }
        (self.run_dir / "state.json").write_text(json.dumps(state))

    def _ssh_options(self) -> dict[str, str]:
        options = {
            "IdentitiesOnly": "yes",
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "LogLevel": "ERROR",
            "BatchMode": "yes",
            "ConnectTimeout": "5",
        }
        # Connection sharing makes later commands ~45 ms instead of ~200 ms (testinfra runs many).
        # The master exits when the guest's sshd goes away; sun_path allows ~108 bytes.
        control_path = f"{self.run_dir}/cm-%r"
        if len(control_path) < 80:
            options |= {
                "ControlMaster": "auto",
                "ControlPath": control_path,
                "ControlPersist": "60s",
            }
        return options

    def _close_ssh_masters(self) -> None:
        for socket_path in self.run_dir.glob("cm-*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", self.name],
                capture_output=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )

    def _wait_for_ssh(self, deadline: float) -> None:
        while True:
            try:
                proc = self.ssh("true", check=False, timeout=5)
                if proc.returncode == 0:
                    return
                error = proc.stderr.strip()
            except subprocess.TimeoutExpired:
                error = "ssh timed out"
            self._check_alive(deadline, f"sshd to answer (last ssh error: {error})")
            time.sleep(0.05)

    def _wait_for_running(self, deadline: float) -> None:
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired("is-system-running", 0)
            cmd = "systemctl is-system-running --wait"
            state = self.ssh(cmd, check=False, timeout=remaining).stdout.strip()
        except subprocess.TimeoutExpired:
            self._check_alive(deadline, "systemctl is-system-running --wait")
            raise  # not reached: _check_alive raises once the deadline has passed
        if state == "running":
            return
        failed = self.ssh("systemctl --failed --no-legend --plain", check=False).stdout.strip()
        raise TestHostError(
            f"{self.name}: system is {state!r}; failed units:\n{failed}\n"
            f"console log tail:\n{self._tail(self.console_log)}"
        )

    def _check_alive(self, deadline: float, waiting_for: str) -> None:
        assert self._nspawn
        if self._nspawn.poll() is not None:
            problem = f"systemd-nspawn exited with rc={self._nspawn.returncode}"
        elif time.monotonic() > deadline:
            problem = "boot timed out"
        else:
            return
        raise TestHostError(
            f"{self.name}: {problem} while waiting for {waiting_for}; "
            f"console log tail ({self.console_log}):\n{self._tail(self.console_log)}"
        )

    @staticmethod
    def _tail(path: Path, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # ----- stop

    def _stop_bridge(self) -> None:
        """Kill each socat's whole process group: forked per-connection children die with it."""
        for cgroup, process in self._forwards:
            _stop_process_group(process, cgroup)
        self._forwards = []
        if self._bridge is not None:
            _stop_process_group(self._bridge, f"{self.name}/bridge")
        self._bridge = None

    def _stop_guest(self) -> None:
        """SIGTERM nspawn (orderly poweroff); fall back to RTMIN+3, then KILL, on guest PID 1."""
        nspawn = self._nspawn
        if nspawn is not None and nspawn.poll() is None:
            nspawn.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                nspawn.wait(STOP_TIMEOUT)
        _signal(self.guest_pid, signal.SIGRTMIN + 3, self.name)
        if not _wait_gone(self.guest_pid, self.name, 5):
            _signal(self.guest_pid, signal.SIGKILL, self.name)
            _wait_gone(self.guest_pid, self.name, 5)
        if nspawn is not None and nspawn.poll() is None:
            nspawn.kill()
        if nspawn is not None:
            nspawn.wait()
        self._nspawn = None


def _stop_all() -> None:
    """atexit hook: never leave guests running after a crashed test run."""
    for host in list(_LIVE):
        try:
            host.stop()
        except Exception:
            log.exception("could not stop %s", host)


atexit.register(_stop_all)


def reap_stale() -> list[str]:
    """Stop hosts whose owning process died without cleaning up (e.g. SIGKILLed pytest).

    Only PIDs recorded in the host's state.json are signalled, and only while they are still in
    that host's cgroup. Bridge networks of dead owners go too (after their hosts), see
    `reap_stale_networks`. Returns the names of the hosts cleaned up.
    """
    reaped = []
    for state in _states():
        if not state["owner_alive"]:
            _reap(state)
            shutil.rmtree(run_root() / state["name"], ignore_errors=True)
            reaped.append(state["name"])
    if networks := reap_stale_networks():
        log.info("removed stale test-host networks: %s", ", ".join(networks))
    return reaped


def _reap(state: dict[str, Any]) -> None:
    name = state["name"]
    _signal(state.get("bridge_pid"), signal.SIGKILL, f"{name}/bridge")
    _signal(state.get("nspawn_pid"), signal.SIGTERM, name)
    _signal(state.get("guest_pid"), signal.SIGRTMIN + 3, name)
    if not _wait_gone(state.get("guest_pid"), name, STOP_TIMEOUT):
        _signal(state.get("guest_pid"), signal.SIGKILL, name)
    _kill_cgroup_leftovers(name)
    _remove_cgroups(name)


# --------------------------------------------------------------------------- CLI


def _cli_boot(name: str, tree: Path | None) -> int:
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    with TestHost.start(name, tree) as host:
        info = {
            "name": host.name,
            "port": host.port,
            "key_path": str(host.key_path),
            "inventory": host.inventory_entry(),
            "testinfra": host.testinfra_spec(),
            "ssh": f"ssh -F {host.ssh_config} {host.name}",
            "boot_seconds": round(time.monotonic() - started, 2),
        }
        print(json.dumps(info, indent=2), flush=True)
        while not stop:
            signal.pause()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.testhost", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or reuse) the cached base tree and print its path")
    boot = sub.add_parser(
        "boot", help="boot a host, print JSON, keep it running until SIGTERM/SIGINT"
    )
    boot.add_argument("name")
    boot.add_argument("--tree", type=Path, help="rootfs to boot (default: the base tree)")
    sub.add_parser("cleanup", help="stop hosts left behind by processes that died")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if problems := missing_prerequisites():
        parser.error("; ".join(problems))
    if args.command == "build":
        started = time.monotonic()
        tree = ensure_base_tree()
        print(
            json.dumps(
                {
                    "tree": str(tree),
                    "key_path": str(key_for_tree(tree)),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
        )
        return 0
    if args.command == "cleanup":
        print(json.dumps({"reaped": reap_stale()}))
        return 0
    return _cli_boot(args.name, args.tree)


if __name__ == "__main__":
    sys.exit(main())
