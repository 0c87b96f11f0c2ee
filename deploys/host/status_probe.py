"""What runs on this machine right now, read without changing anything: the status report's host
side (``deploys/facts/status.py`` runs it, ``deploys/core/status.py`` reads its output).

Standard library only and self-contained (no import of the rest of ``host/``): the controller
ships this file's source on the command line, ``python3 -B -c SOURCE REQUEST``, so the whole
report is one SSH command and nothing is written on the host (``-B``: not even bytecode).

REQUEST is base64 of zlib-compressed JSON::

    {"list_units": ["systemctl", "list-units", ..., "matrix-synapse*"],
     "health": {"matrix-synapse.service": "http://127.0.0.1:8008/health", ...},
     "timeout": 2}

Output, one record per line (the first word says which):

- ``U <line>``: a line of ``list_units`` (``UNIT LOAD ACTIVE SUB DESCRIPTION``), as systemd
  printed it;
- ``P <unit> <main pid> <uptime s> <rss bytes> <pid,pid,...>``: each unit of that list with
  processes, read from its cgroup (``cgroup.procs``) and ``/proc/<pid>/stat``, not ``systemctl
  show`` (one D-Bus call per unit: seconds at 1,000 units). The main process is the one whose
  parent is outside the unit (the oldest if several); uptime is that process's; memory is the
  resident memory (RSS) of all of the unit's processes;
- ``L <line>``: a line of ``ss -ltnpH`` (listening TCP sockets and the processes holding them);
- ``H <unit> OK`` or ``H <unit> <why not>``: ``GET`` of each health URL, all at once, each with a
  short timeout (200 is OK);
- ``E <message>``: something could not be read (the rest is still reported).

Exits 1, after printing what it has, only when ``list_units`` fails (systemd not answering).
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zlib

# Where systemd keeps one cgroup per unit: the unified hierarchy (pure or hybrid), else the legacy
# name=systemd one. The first that has system.slice is the one in use.
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/sys/fs/cgroup/systemd")
MAX_PARALLEL_PROBES = 64


def encode_request(list_units: list[str], health: dict[str, str], timeout: float) -> str:
    """The REQUEST argument (the controller calls this)."""
    document = {"list_units": list_units, "health": health, "timeout": timeout}
    packed = zlib.compress(json.dumps(document, separators=(",", ":")).encode(), 9)
    return base64.b64encode(packed).decode()


def decode_request(text: str) -> dict:
    return json.loads(zlib.decompress(base64.b64decode(text)))


def unit_cgroups(units: set[str]) -> dict[str, str]:
    """unit -> its cgroup directory, for the units of ``units`` that have one (running units)."""
    root = next((r for r in CGROUP_ROOTS if os.path.isdir(f"{r}/system.slice")), None)
    found: dict[str, str] = {}
    if root is None:
        return found
    pending = [f"{root}/system.slice"]
    while pending:  # slices nest (system-matrix\x2dsynapse\x2dworker.slice); units are leaves
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name in units:
                found[entry.name] = entry.path
            elif entry.name.endswith(".slice"):
                pending.append(entry.path)
    return found


def process_stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, start time in clock ticks after boot, resident pages), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), int(fields[19]), int(fields[21])


def unit_processes(cgroup: str, now: float) -> tuple[int, float, int, list[int]] | None:
    """(main pid, its uptime in seconds, RSS bytes of every process, every pid) of one unit's
    cgroup, or None when it holds no process. ``now``: seconds since boot (``/proc/uptime``)."""
    try:
        with open(f"{cgroup}/cgroup.procs") as procs:
            pids = [int(line) for line in procs if line.strip()]
    except OSError:
        return None
    stats = {pid: s for pid in pids if (s := process_stat(pid)) is not None}
    if not stats:
        return None
    tops = [pid for pid, (ppid, _, _) in stats.items() if ppid not in stats] or list(stats)
    main = min(tops, key=lambda pid: (stats[pid][1], pid))
    started = stats[main][1] / os.sysconf("SC_CLK_TCK")
    rss = sum(pages for _, _, pages in stats.values()) * os.sysconf("SC_PAGE_SIZE")
    return main, max(0.0, now - started), rss, sorted(stats)


def health_problem(url: str, timeout: float) -> str | None:
    """None if ``GET url`` answers 200, else what happened."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=timeout) as response:
            return None if response.status == 200 else f"GET {url} answered {response.status}"
    except urllib.error.HTTPError as error:
        return f"GET {url} answered {error.code}"
    except (OSError, ValueError) as error:
        return f"GET {url} failed: {getattr(error, 'reason', error)}"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: list[str]) -> int:
    request = decode_request(argv[0])
    timeout = float(request["timeout"])
    health: dict[str, str] = request["health"]
    # The probes start first and run while systemd, the cgroups and ss are read.
    pool = concurrent.futures.ThreadPoolExecutor(max(1, min(MAX_PARALLEL_PROBES, len(health))))
    probes = {unit: pool.submit(health_problem, url, timeout) for unit, url in health.items()}
    listed = subprocess.run(request["list_units"], capture_output=True, text=True)
    lines = [line for line in listed.stdout.splitlines() if line.strip()]
    for line in lines:
        print("U", line)
    if listed.returncode != 0:
        print("E", one_line(f"{' '.join(request['list_units'])}: {listed.stderr}"))
    units = {line.split()[0] for line in lines} | set(health)
    with open("/proc/uptime") as uptime:
        now = float(uptime.read().split()[0])
    for unit, cgroup in sorted(unit_cgroups(units).items()):
        found = unit_processes(cgroup, now)
        if found is not None:
            pid, uptime, rss, pids = found
            print("P", unit, pid, int(uptime), rss, ",".join(map(str, pids)))
    try:
        ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True)
        for line in ss.stdout.splitlines():
            print("L", line)
        if ss.returncode != 0:
            print("E", one_line(f"ss -ltnpH: {ss.stderr}"))
    except OSError as error:
        print("E", one_line(f"ss -ltnpH (iproute2) cannot run: {error}"))
    for unit, probe in probes.items():
        print("H", unit, one_line(probe.result() or "OK"))
    pool.shutdown()
    return 1 if listed.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
