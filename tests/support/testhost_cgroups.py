"""cgroups, processes and ports of running test hosts: spawn into a host's cgroups, signal and reap
what is left, find free loopback ports.

Part of the test-host harness (``tests/support/testhost.py`` is the entry point)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.testhost_env import (
    REQUIRED_TOOLS,
    TestHostError,
    run_root,
)

log = logging.getLogger(__name__)


_CGROUP_BASE = Path("/sys/fs/cgroup")
# Moves the shell into the cgroups listed in $TESTHOST_CGROUP_PROCS, then execs the real command.
_CGROUP_EXEC = 'for p in $TESTHOST_CGROUP_PROCS; do echo $$ > "$p" || exit 1; done; exec "$@"'


# --------------------------------------------------------------------------- cgroups and processes


def _stop_process_group(process: subprocess.Popen[bytes], cgroup: str) -> None:
    if process.returncode is None:  # not reaped yet, so the PID/PGID cannot have been reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _kill_cgroup_leftovers(cgroup)
    _remove_cgroups(cgroup)


def _cgroup_roots() -> list[Path]:
    """Hierarchies nspawn uses: name=systemd + unified on hybrid hosts, else the cgroup2 root."""
    hybrid = [_CGROUP_BASE / "systemd", _CGROUP_BASE / "unified"]
    if all((p / "cgroup.procs").exists() for p in hybrid):
        return hybrid
    if (_CGROUP_BASE / "cgroup.controllers").exists():  # pure cgroup2 host (untested)
        return [_CGROUP_BASE]
    return []


def _cgroup_dirs(rel: str) -> list[Path]:
    return [root / "testhost" / rel for root in _cgroup_roots()]


def _spawn_in_cgroup(rel: str, cmd: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start `cmd` in its own session inside testhost/<rel> in every hierarchy.

    Own cgroups matter: with --keep-unit and no host systemd, nspawn creates payload/ and
    supervisor/ under its *current* cgroup, so two hosts launched from one place would share them.
    """
    procs = []
    for path in _cgroup_dirs(rel):
        path.mkdir(parents=True, exist_ok=True)
        procs.append(str(path / "cgroup.procs"))
    env = {**os.environ, "TESTHOST_CGROUP_PROCS": " ".join(procs)}
    return subprocess.Popen(
        ["/bin/sh", "-c", _CGROUP_EXEC, "sh", *cmd],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **popen,
    )


def _cgroup_pids(rel: str) -> set[int]:
    """PIDs anywhere below testhost/<rel> (all of them descend from processes we started)."""
    pids: set[int] = set()
    for top in _cgroup_dirs(rel):
        for dirpath, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _in_cgroup(pid: int, rel: str) -> bool:
    """True if `pid` is alive and inside testhost/<rel>: guards against PID reuse."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    prefix = f"/testhost/{rel}"
    inside = any(
        line.split(":", 2)[2] == prefix or line.split(":", 2)[2].startswith(prefix + "/")
        for line in lines
    )
    return inside and state != "Z"


def _signal(pid: int | None, sig: int, rel: str) -> None:
    """Send `sig` to `pid` only if it is still one of ours (alive and in our cgroup)."""
    if pid and _in_cgroup(pid, rel):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int | None, rel: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid and _in_cgroup(pid, rel):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_cgroup_leftovers(rel: str, timeout: float = 5.0) -> None:
    """SIGKILL whatever is still in our cgroups (e.g. orphaned socat children) and wait."""
    deadline = time.monotonic() + timeout
    while pids := _cgroup_pids(rel):
        if time.monotonic() > deadline:
            raise TestHostError(f"processes {sorted(pids)} still in cgroup testhost/{rel}")
        for pid in pids:
            _signal(pid, signal.SIGKILL, rel)
        time.sleep(0.05)


def _remove_cgroups(rel: str) -> None:
    """rmdir testhost/<rel> and everything the guest created below it, deepest first."""
    for top in _cgroup_dirs(rel):
        if not top.exists():
            continue
        for dirpath, _, _ in os.walk(top, topdown=False):
            Path(dirpath).rmdir()


def _proc_start_time(pid: int) -> str | None:
    """Start time of a live process (None if gone or a zombie): a PID-reuse-proof identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Zombies count as dead: PID 1 on these VMs is slow to reap orphans.
    return None if fields[0] == "Z" else fields[19]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:`port` in our netns? (No probe connection needed.)"""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in fh))


def _states() -> list[dict[str, Any]]:
    """state.json of every host under the run root, plus whether its owning process lives."""
    states = []
    for state_file in run_root().glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads(state_file.read_text())
            state["owner_alive"] = _proc_start_time(int(state["owner_pid"])) == state["owner_start"]
            states.append(state)
    return states


def _live_states() -> list[dict[str, Any]]:
    return [state for state in _states() if state["owner_alive"]]


def missing_prerequisites() -> list[str]:
    """Human-readable reasons why test hosts cannot run here (empty if they can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (systemd-nspawn and cgroup setup need it)")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if missing:
        problems.append(f"missing tools; install with: apt-get install -y {' '.join(missing)}")
    if not _cgroup_roots():
        problems.append(f"no usable cgroup hierarchy under {_CGROUP_BASE}")
    return problems
