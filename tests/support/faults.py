"""Fault injection on a test host, driven from the host side (tests/integration/test_faults.py).

Everything here observes or disturbs a real deploy from inside the guest: a watcher that SIGKILLs
the host program (``python3 -m host.apply``) once it has renamed its k-th new file into place,
and a referee that holds the
deploy lock until two applies wait for it, then records who held the lock when. The scripts run
with the guest's ``python3`` (standard library only), in a thread of the test via ``host.ssh``,
and say they are ready by creating a file the test polls for.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from deploys.core.plan import build_plan
from deploys.core.render import DesiredState, desired_state, health_ports, paths_for
from deploys.core.settings import parse_settings
from deploys.host.units import EVERY_PROCESS, MAIN, worker_name
from tests.support.deploying import STANDIN_SETTINGS
from tests.support.settings_data import make_data
from tests.support.testhost import TestHost

LOCK_PATH = "/run/lock/pyinfra-synapse.lock"
JOURNAL_PATH = "/var/lib/pyinfra-synapse/pending-changes.json"
TMP_SUFFIX = ".pyinfra-synapse-tmp"
STANDIN_FAULT_DIR = "/etc/matrix-synapse-standin"

# Finds the host side of a deploy: ``python3 -m host.apply <stage>`` (not the ``sh -c``
# around it, whose command line names the script too).
_FIND_APPLIES = r"""
import os, json

def applies():
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 4 and b"python" in argv[0] and argv[1:3] == [b"-m", b"host.apply"]:
            found[int(entry)] = argv[3].decode()
    return found
"""

_KILL_WATCHER = (
    _FIND_APPLIES
    + r"""
import signal, sys, time

dirs, threshold, ready, timeout, tmp_suffix = sys.argv[1].split(","), int(sys.argv[2]), \
    sys.argv[3], float(sys.argv[4]), sys.argv[5]

def scan():
    # (files renamed into place since we started, temporary files present), by name: a directory
    # read while entries are renamed may return an entry twice.
    new, tmp = set(), set()
    for d in dirs:
        for e in os.scandir(d):
            if tmp_suffix in e.name:  # a temporary file, or the previous copy kept beside it
                tmp.add(e.path)
            else:
                try:
                    if e.stat(follow_symlinks=False).st_mtime_ns > since:
                        new.add(e.path)
                except FileNotFoundError:
                    pass
    return len(new), len(tmp)

# Files of earlier runs are older than this; a file written by the run under test is newer.
since = max((e.stat(follow_symlinks=False).st_mtime_ns for d in dirs for e in os.scandir(d)),
            default=0)
open(ready, "w").close()
deadline = time.monotonic() + timeout
pid = None
while pid is None and time.monotonic() < deadline:
    pid = next(iter(applies()), None)
    time.sleep(0.01)  # it unpacks and hashes every file before its first write
result = {"killed": False, "seen_apply": pid is not None, "polls": 0}
while pid is not None and time.monotonic() < deadline:
    new, tmp = scan()
    result["polls"] += 1
    if new >= threshold:
        try:
            os.kill(pid, signal.SIGKILL)
            result["killed"] = True
        except ProcessLookupError:
            pass
        result["new_when_killed"], result["tmp_when_killed"] = new, tmp
        break
    if not os.path.exists(f"/proc/{pid}"):
        result["new_at_exit"] = new
        break
time.sleep(0.5)  # let the dead process's parent shell clean up, then count once more
result["new_after"], result["tmp_after"] = scan()
print(json.dumps(result))
"""
)

_REFEREE = (
    _FIND_APPLIES
    + r"""
import fcntl, sys, time

lock_path, ready, expected, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
os.makedirs(os.path.dirname(lock_path), exist_ok=True)
lock = open(lock_path, "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
inode = os.fstat(lock.fileno()).st_ino
open(ready, "w").close()

applies_seen = {}
def look():
    for pid, stage in applies().items():
        if pid not in applies_seen:
            try:
                with open(os.path.join(stage, "manifest.json")) as f:
                    planned = len(json.load(f)["planned_workers"])
            except (OSError, ValueError, KeyError):
                continue  # not unpacked yet: read it at the next look
            applies_seen[pid] = {"planned_workers": planned, "seen": time.time()}

# Hold the lock until every apply is there, waiting for it: both controllers read the host first.
while len(applies_seen) < expected and time.monotonic() < deadline:
    look()
    time.sleep(0.02)
released = time.time()
fcntl.flock(lock, fcntl.LOCK_UN)
lock.close()

def holder():
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:56789 0 EOF"; "->" lines are blocked waiters
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].split(":")[-1] == str(inode):
                return int(parts[4])
    return None

# Lock holders over time, sampled as fast as /proc/locks can be read: [pid, last sample before
# it held, first sample it held, last sample it held, first sample after]. A hold shorter than
# one sample (an apply that refuses at once) may go unseen; its process's lifetime is recorded.
holds, current, previous = [], None, released
while time.monotonic() < deadline:
    now, pid = time.time(), holder()
    if pid != current:
        if current is not None:
            holds[-1][4] = now
        if pid is not None:
            holds.append([pid, previous, now, now, None])
        current = pid
    elif pid is not None:
        holds[-1][3] = now
    previous = now
    for apply_pid, info in applies_seen.items():
        if "gone" not in info and not os.path.exists(f"/proc/{apply_pid}"):
            info["gone"] = now
    if current is None and all("gone" in info for info in applies_seen.values()):
        break
print(json.dumps({"released": released, "applies": applies_seen, "holds": holds}))
"""
)


@dataclass
class Background:
    """A host-side script running in a thread; ``result`` is its JSON output."""

    thread: threading.Thread
    box: dict[str, Any] = field(default_factory=dict)

    def result(self, timeout: float) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "host-side script did not finish"
        if "error" in self.box:
            raise self.box["error"]
        return json.loads(self.box["stdout"])


def _start(host: TestHost, script: str, args: list[str], ready: str, timeout: float) -> Background:
    host.ssh(f"rm -f {ready}")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            command = "python3 - " + " ".join(shlex.quote(a) for a in args)
            box["stdout"] = host.ssh(command, input=script, timeout=timeout + 60).stdout
        except Exception as error:  # reported by result()
            box["error"] = error

    background = Background(threading.Thread(target=run, daemon=True), box)
    background.thread.start()
    wait_for(
        lambda: host.ssh(f"test -e {ready}", check=False).returncode == 0 or "error" in box,
        timeout=60,
        what=f"{ready} on the host",
    )
    if "error" in box:
        raise box["error"]
    return background


def kill_apply_after(
    host: TestHost, directories: list[str], files: int, timeout: float = 300
) -> Background:
    """SIGKILL the host program (``python3 -m host.apply``) as soon as ``files`` files under
    ``directories`` are newer than when the watcher started (written by the run under test)."""
    ready = "/run/faults-kill-watcher.ready"
    args = [",".join(directories), str(files), ready, str(timeout), TMP_SUFFIX]
    return _start(host, _KILL_WATCHER, args, ready, timeout)


def hold_lock_until_applies_wait(host: TestHost, applies: int, timeout: float = 300) -> Background:
    """Hold the deploy lock until ``applies`` host programs (``python3 -m host.apply``) wait for
    it, release it, and record who held it when (``holds``: pid and time bounds) and when each
    apply was first seen and gone (``applies``), all by the host's clock."""
    ready = "/run/faults-referee.ready"
    return _start(host, _REFEREE, [LOCK_PATH, ready, str(applies), str(timeout)], ready, timeout)


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Rendering:
    """What the deploy should leave on a host for one inventory entry, computed locally."""

    desired: DesiredState
    workers_dir: str
    units: tuple[str, ...]  # every planned process's unit
    health: Mapping[str, int]  # unit -> port answering /health

    @property
    def hashes(self) -> dict[str, str]:
        return {p: hashlib.sha256(f.content).hexdigest() for p, f in self.desired.files.items()}


def rendering(host: TestHost, data: Mapping[str, Any]) -> Rendering:
    """The files ``write_inventory(..., [(host, data)])`` makes the deploy write, rendered here by
    the plan and render code with the inventory's host data."""
    settings = parse_settings(make_data(**STANDIN_SETTINGS, **data))
    plan = build_plan(settings, host.name)
    return Rendering(
        desired_state(settings, plan),
        paths_for(settings).workers_dir,
        tuple(p.unit for p in plan.processes),
        health_ports(plan),
    )


def host_hashes(host: TestHost, paths: list[str]) -> dict[str, str | None]:
    """sha256 of each path on the host (None: missing), in one command."""
    script = (
        "import hashlib, json, sys\n"
        "out = {}\n"
        "for p in json.load(sys.stdin):\n"
        "    try:\n"
        "        out[p] = hashlib.sha256(open(p, 'rb').read()).hexdigest()\n"
        "    except FileNotFoundError:\n"
        "        out[p] = None\n"
        "print(json.dumps(out))\n"
    )
    command = f"python3 -c {shlex.quote(script)}"
    return json.loads(host.ssh(command, input=json.dumps(paths)).stdout)


def listing(host: TestHost, directories: list[str]) -> list[str]:
    """Every entry (dotfiles included) in ``directories``."""
    quoted = " ".join(shlex.quote(d) for d in directories)
    return host.ssh(f"find {quoted} -mindepth 1 -maxdepth 1 | sort").stdout.split()


def active_states(host: TestHost, units: list[str]) -> dict[str, str]:
    out = host.ssh("systemctl show --property=Id,ActiveState " + " ".join(units)).stdout
    states = {}
    for block in out.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[props["Id"]] = props["ActiveState"]
    return states


def http_get(host: TestHost, url: str) -> tuple[int | None, str, str]:
    """(status, X-Synapse-Upstream header, body) of a GET from inside the host; status None when
    nothing answers."""
    script = (
        "import json, sys, urllib.error, urllib.request\n"
        "try:\n"
        "    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
        "except urllib.error.HTTPError as e:\n"
        "    r = e\n"
        "except OSError:\n"
        "    print(json.dumps([None, '', ''])); sys.exit()\n"
        "print(json.dumps([r.status, r.headers.get('X-Synapse-Upstream', ''),"
        " r.read().decode(errors='replace')]))\n"
    )
    status, upstream, body = json.loads(
        host.ssh(f"python3 -c {shlex.quote(script)} {shlex.quote(url)}").stdout
    )
    return status, upstream, body


def health(host: TestHost, ports: Mapping[str, int]) -> dict[str, int | None]:
    """unit -> status of ``GET /health`` on its port (None: nothing answers), in one command."""
    script = (
        "import json, sys, urllib.request\n"
        "out = {}\n"
        "for unit, port in json.load(sys.stdin).items():\n"
        "    try:\n"
        "        with urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=3) as r:\n"
        "            out[unit] = r.status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        out[unit] = e.code\n"
        "    except OSError:\n"
        "        out[unit] = None\n"
        "print(json.dumps(out))\n"
    )
    command = f"python3 -c {shlex.quote('import urllib.error' + chr(10) + script)}"
    return json.loads(host.ssh(command, input=json.dumps(dict(ports))).stdout)


def stale_processes(host: TestHost, want: Rendering, slack: float = 0.05) -> dict[str, str]:
    """Processes running an older config than the one on disk: unit -> the file written after its
    main process started (start times from systemd's monotonic clock, mtimes from the real-time
    clock, compared on the host)."""
    reads: dict[str, list[str]] = {}
    for unit in want.units:
        name = worker_name(unit) or MAIN
        reads[unit] = sorted(
            p
            for p, f in want.desired.files.items()
            if EVERY_PROCESS in f.restarts or name in f.restarts
        )
    script = (
        "import json, os, subprocess, sys, time\n"
        "reads = json.load(sys.stdin)\n"
        "show = ['systemctl', 'show', '--property=Id,ExecMainStartTimestampMonotonic', *reads]\n"
        "out = subprocess.run(show, capture_output=True, text=True, check=True).stdout\n"
        "offset = time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)\n"
        "stale = {}\n"
        "for block in out.strip().split('\\n\\n'):\n"
        "    props = dict(line.split('=', 1) for line in block.splitlines() if '=' in line)\n"
        "    started = int(props['ExecMainStartTimestampMonotonic']) / 1e6 + offset\n"
        "    for path in reads[props['Id']]:\n"
        "        if os.stat(path).st_mtime > started + float(sys.argv[1]):\n"
        "            stale[props['Id']] = path\n"
        "print(json.dumps(stale))\n"
    )
    command = f"python3 -c {shlex.quote(script)} {slack}"
    return json.loads(host.ssh(command, input=json.dumps(reads)).stdout)


@contextmanager
def timed() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.monotonic()
    try:
        yield box
    finally:
        box.append(time.monotonic() - start)
