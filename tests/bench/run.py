"""Benchmark: our deploy against one pyinfra operation per file, at 24 ms RTT, on real test hosts.

    make bench                               # full run: >= 3 runs per cell, prints two tables
    python -m tests.bench.run --quick        # smoke run: 1 run per cell, 13 and 130 workers
    python -m tests.bench.run --restarts-only --quick   # only the restart rows, 1 run each
    python -m tests.bench.run --cluster-plan-only   # pure controller row: 100 machines x 100
                                                    # workers planned and rendered (cluster_plan.py)
    python -m tests.bench.run --cluster-only --quick   # one homeserver on 8 machines x 130
                                                       # workers vs 1 machine x 130, 1 run each

The second table (tests/bench/restarts.py) is a full restart under client load, rolling vs
all-at-once; what follows describes the first.

Every host is a fresh systemd-nspawn Debian guest (tests/support/testhost.py) with nginx and
Redis, running the stand-in for Synapse (tests/support/standin_synapse.py: it reads its configs,
binds its listeners, answers ``/health`` and subscribes to Redis); pyinfra reaches its sshd
through `LatencyProxy` (12 ms each way). The deploy runs with its defaults, nginx routing and
readiness on, except what the stand-in cannot do: installing Synapse and checking configs with it
(``STANDIN_SETTINGS`` in tests/support/deploying.py). After each of our first deploys the
benchmark checks that every process is subscribed to Redis and nginx answers through its routes.
Worker sets are the ``little-federation-helper`` preset (one federation sender) plus generic
workers, so the totals are exactly 13, 130 and 1,000.

For each deploy and worker count it measures, as the median of the runs:

- *first deploy*: a fresh host each run; ours also starts every unit, the baseline only writes;
- *no change*: the same host right after, nothing to do;
- *one worker changed*: one worker's file edited on the host first (drift), so the deploy
  rewrites that one file (ours also restarts that one worker);

plus the SSH exec channels and SFTP uploads (tests/support/pyinfra_counted.py), and the
controller's peak RSS (``wait4`` rusage of the pyinfra process). Runs are normal pyinfra runs
(prepare, then execute; no ``-y``), as a user runs them.

The last rows are one homeserver on 8 machines (issue 13): 8 fresh hosts on one private bridge
(tests/support/testhost_net.py), each at its own address and behind its own proxy, the first the
main host (main process, nginx, Redis), 130 workers on each (tests/bench/cluster_layout.py), and
its ratio to the 1 machine x 130 row of the same invocation. After its first deploy every one of
the 1,041 processes must be subscribed to main's Redis (with the password) and nginx on main must
answer; the changed run edits one worker's file on every machine. Its service start is the main
host's plus the slowest workers host's (main is applied and ready before the workers hosts apply,
in parallel), and its SSH counts are the main host's and the workers hosts' apart.

*Service start* is the time the host spent inside the deploy's state-changing ``systemctl``
commands (daemon-reload, enable, start, restart, stop, reload), measured by a timing wrapper
installed as ``/usr/local/sbin/systemctl`` on the test host (it runs ``/usr/bin/systemctl`` and
logs start and end). Subtracting it from the first deploy leaves the fan-out: rendering, the fact,
shipping and writing the files, ``nginx -t``, and the readiness wait (``/health`` on every
started process, ``PUBSUB NUMSUB``) that follows the starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from deploys.core.settings import REPO_ROOT
from tests.bench.cluster_layout import DOMAIN as CLUSTER_DOMAIN, SECRETS, cluster_data
from tests.bench.cluster_plan import cluster_rows
from tests.bench.latency_proxy import LatencyProxy
from tests.bench.restarts import restart_table
from tests.support.deploying import counted_pyinfra, install_standin, write_inventory
from tests.support.testhost import (
    BridgeNetwork,
    TestHost,
    ensure_base_tree,
    missing_prerequisites,
)

OURS = "deploys/synapse.py"
BASELINE = "tests/bench/baseline_deploy.py"
DRIFTED_WORKER = "/etc/matrix-synapse/workers/generic-0.yaml"
SHIM_LOG = "/run/bench-systemctl.log"
# Runs /usr/bin/systemctl unchanged and logs "start end rc args" (first in root's PATH).
SYSTEMCTL_SHIM = f"""#!/bin/sh
start=$(date +%s.%N)
/usr/bin/systemctl "$@"
rc=$?
echo "$start $(date +%s.%N) $rc $*" >> {SHIM_LOG}
exit $rc
"""
SERVICE_VERBS = frozenset(
    {
        "daemon-reload",
        "enable",
        "disable",
        "start",
        "stop",
        "restart",
        "reload",
        "try-restart",
        "reload-or-restart",
    }
)
COLUMNS = ("first", "no_change", "changed")
TIMES = "\N{MULTIPLICATION SIGN}"  # in ratios and "8 hosts TIMES 130"
_names = itertools.count(1)


def workers_data(workers: int) -> dict[str, Any]:
    """Host data for exactly `workers` workers: one federation sender plus generic workers."""
    return {
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "little-federation-helper",
        "matrix_synapse_workers_generic_workers_count": workers - 1,
    }


# --------------------------------------------------------------------------- hosts


class BenchHost:
    """A fresh test host behind its own latency proxy, ready for a deploy."""

    def __init__(
        self, delay: float, tree: Path | None = None, network: BridgeNetwork | None = None
    ) -> None:
        """A host running the stand-in, or, from ``tree``, whatever that tree installed (the
        real Synapse: tests/support/synapse_tree.py); on ``network`` (a private bridge the
        hosts of one cluster share) if given, else with only its own loopback."""
        self.host = TestHost.start(f"bench{os.getpid()}-{next(_names)}", tree=tree, network=network)
        try:
            if tree is None:
                install_standin(self.host)
            self.host.ssh(
                "cat > /usr/local/sbin/systemctl && chmod 755 /usr/local/sbin/systemctl",
                input=SYSTEMCTL_SHIM,
            )
            self.proxy = LatencyProxy("127.0.0.1", self.host.port, delay=delay)
            self.proxy.start()
        except BaseException:
            self.host.stop()
            raise

    def inventory_entry(self, user: str = "root") -> tuple[str, dict[str, Any]]:
        """The test host's inventory entry, with SSH going through the proxy."""
        name, connection = self.host.inventory_entry(user=user)
        return name, {**connection, "ssh_port": self.proxy.port}

    def service_seconds(self) -> float:
        """Seconds spent in state-changing systemctl commands since the last call (direct SSH)."""
        out = self.host.ssh(f"cat {SHIM_LOG} 2>/dev/null; rm -f {SHIM_LOG}").stdout
        total = 0.0
        for line in out.splitlines():
            start, end, _rc, *args = line.split()
            verb = next((a for a in args if not a.startswith("-")), "")
            if verb in SERVICE_VERBS:
                total += float(end) - float(start)
        return total

    def check_serving(self, processes: int, server_name: str, password: str | None = None) -> None:
        """Fail the benchmark unless the defaults really ran: every process subscribed to Redis
        and nginx routing to a worker (the stand-in names itself in its answers). ``password``:
        Redis's (a cluster's main host requires it, from loopback too)."""
        auth = f"REDISCLI_AUTH={password} " if password else ""
        command = f"{auth}redis-cli PUBSUB NUMSUB {server_name}"
        subscribed = int(self.host.ssh(command).stdout.split()[-1])
        answer = self.host.ssh(
            'python3 -c "import urllib.request as u; '
            "print(u.urlopen('http://127.0.0.1:8088/_matrix/client/v3/sync').read().decode())\""
        ).stdout
        if subscribed != processes or '"standin": "generic-' not in answer:
            raise RuntimeError(
                f"{self.host.name}: {subscribed} of {processes} processes "
                f"subscribed to Redis; nginx /sync answered {answer!r}"
            )

    def drift_one_worker(self, path: str = DRIFTED_WORKER) -> None:
        """Edit one worker's file on the host, so the next deploy must rewrite just that one."""
        self.host.ssh(f"echo '# drift' >> {path}")
        self.service_seconds()  # forget systemctl calls made outside a timed run

    def stop(self) -> None:
        self.proxy.stop()
        self.host.stop()


@contextlib.contextmanager
def bench_hosts(count: int, delay: float, bridged: bool = False) -> Iterator[list[BenchHost]]:
    """``count`` fresh hosts, each behind its own proxy; ``bridged``: all on one new private
    bridge (tests/support/testhost_net.py), each at its own ``host.address``. Every host (by the
    PIDs it recorded) and the bridge are removed on the way out, whatever happened."""
    hosts: list[BenchHost] = []
    network = BridgeNetwork.create(keep=True) if bridged else None
    try:
        for _ in range(count):
            hosts.append(BenchHost(delay, network=network))
        yield hosts
    finally:
        try:
            for bench_host in hosts:
                bench_host.stop()
        finally:
            if network is not None:
                network.close()


# --------------------------------------------------------------------------- one pyinfra run


@dataclasses.dataclass(frozen=True)
class Sample:
    """One pyinfra run: wall time, per-host SSH execs and uploads, peak RSS, service time."""

    seconds: float
    commands: int  # per host (the most any host saw)
    uploads: int
    peak_rss_mib: float
    service_seconds: float  # the slowest host's (hosts run in parallel); a cluster: see below
    per_host: tuple[tuple[int, int], ...] = ()  # (commands, uploads) of each host, in order


def run_pyinfra(
    workdir: Path,
    inventory: Path,
    deploy: str,
    hosts: Sequence[BenchHost],
    service: Callable[[list[float]], float] = max,
) -> Sample:
    """Run ``pyinfra INVENTORY DEPLOY`` once (answering its prompt) and measure it. ``service``
    makes one figure of the hosts' service start times (default: the slowest host's)."""
    counts = workdir / "counts.json"
    counts.unlink(missing_ok=True)
    log = workdir / "pyinfra.log"
    with open(log, "w") as output:
        started = time.monotonic()
        proc = subprocess.Popen(
            counted_pyinfra(counts, inventory, deploy),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"\n")  # "Are you sure?" when there are changes
            proc.stdin.close()
            # wait4, not Popen.wait: it returns the child's own resource usage (peak RSS).
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: no pyinfra left deploying to hosts being removed
            proc.kill()
            proc.wait()
            raise
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pyinfra {deploy} failed (rc={proc.returncode}):\n"
            + "\n".join(log.read_text().splitlines()[-40:])
        )
    data = json.loads(counts.read_text())
    return Sample(
        seconds,
        max(data["commands"].values(), default=0),
        max(data["uploads"].values(), default=0),
        usage.ru_maxrss / 1024,
        service([h.service_seconds() for h in hosts]),
        tuple(
            (data["commands"].get(h.host.name, 0), data["uploads"].get(h.host.name, 0))
            for h in hosts
        ),
    )


def run_cycle(deploy: str, workers: int, host_count: int, delay: float) -> dict[str, Sample]:
    """First deploy on fresh hosts, then a no-change run, then a one-worker-changed run."""
    with bench_hosts(host_count, delay) as hosts, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # BenchHost stands in for TestHost: write_inventory only calls inventory_entry().
        # One homeserver per host (hosts sharing a matrix_domain would be one cluster).
        names = [f"hs{i}.example.org" for i in range(len(hosts))]
        entries = [
            (h, {**workers_data(workers), "matrix_domain": name})
            for h, name in zip(hosts, names, strict=True)
        ]
        inventory = write_inventory(workdir / "inventory.py", entries)  # type: ignore[arg-type]
        samples = {"first": run_pyinfra(workdir, inventory, deploy, hosts)}
        if deploy == OURS:
            for bench_host, name in zip(hosts, names, strict=True):
                bench_host.check_serving(workers + 1, name)
        samples["no_change"] = run_pyinfra(workdir, inventory, deploy, hosts)
        for bench_host in hosts:
            bench_host.drift_one_worker()
        samples["changed"] = run_pyinfra(workdir, inventory, deploy, hosts)
        return samples


def _main_then_workers(seconds: list[float]) -> float:
    """A cluster's service start: the main host's, then the slowest workers host's (the workers
    hosts apply in parallel once main is ready: README, "Several machines")."""
    return seconds[0] + max(seconds[1:], default=0.0)


def run_cluster_cycle(machines: int, workers: int, delay: float) -> dict[str, Sample]:
    """`run_cycle` for one homeserver on ``machines`` test hosts on a private bridge, with
    ``workers`` workers on each (tests/bench/cluster_layout.py; the first host is main). The
    changed run edits one worker's file on every machine (as the independent hosts' row does)."""
    with bench_hosts(machines, delay, bridged=True) as hosts, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        layout = cluster_data([h.host.address or "" for h in hosts], workers)
        entries = list(zip(hosts, layout, strict=True))
        inventory = write_inventory(workdir / "inventory.py", entries)  # type: ignore[arg-type]

        def run() -> Sample:
            return run_pyinfra(workdir, inventory, OURS, hosts, _main_then_workers)

        samples = {"first": run()}
        # Every process of the cluster subscribed to main's Redis; nginx on main answers.
        password = SECRETS["matrix_synapse_redis_password"]
        hosts[0].check_serving(machines * workers + 1, CLUSTER_DOMAIN, password)
        samples["no_change"] = run()
        # Each machine's first generic worker (names are numbered across the cluster).
        generic = itertools.accumulate(
            [0, *(d["matrix_synapse_workers_generic_workers_count"] for d in layout)]
        )
        for bench_host, number in zip(hosts, generic, strict=False):
            bench_host.drift_one_worker(f"/etc/matrix-synapse/workers/generic-{number}.yaml")
        samples["changed"] = run()
        return samples


# --------------------------------------------------------------------------- results


@dataclasses.dataclass
class Row:
    """All runs of one deploy at one scale."""

    scenario: str
    deploy: str
    runs: list[dict[str, Sample]] = dataclasses.field(default_factory=list)
    cluster: bool = False  # counts of the main host and of the workers hosts, apart

    def median(self, column: str, field: str = "seconds") -> float:
        return statistics.median(getattr(run[column], field) for run in self.runs)

    def fan_out(self) -> float:
        """First deploy minus the host's service start: the median of the per-run differences."""
        return statistics.median(r["first"].seconds - r["first"].service_seconds for r in self.runs)

    def peak_rss(self) -> float:
        return max(s.peak_rss_mib for run in self.runs for s in run.values())

    def counts(self) -> str:
        last = self.runs[-1]
        if not self.cluster:
            return " · ".join(f"{last[c].commands}/{last[c].uploads}" for c in COLUMNS)

        def cell(pairs: Sequence[tuple[int, int]]) -> str:
            (low, low_up), (high, high_up) = min(pairs), max(pairs)
            same = (low, low_up) == (high, high_up)
            return f"{high}/{high_up}" if same else f"{low}/{low_up} to {high}/{high_up}"

        main = " · ".join(cell(last[c].per_host[:1]) for c in COLUMNS)
        workers = " · ".join(cell(last[c].per_host[1:]) for c in COLUMNS)
        return f"main {main}; each workers host {workers}"


def measure(
    scenario: str,
    deploy: str,
    workers: int,
    hosts: int,
    runs: int,
    delay: float,
    cluster: bool = False,
) -> Row:
    """``runs`` cycles of ``hosts`` independent homeservers, or with ``cluster`` one homeserver
    on ``hosts`` machines (our deploy only)."""
    row = Row(scenario, "ours" if deploy == OURS else "per-file", cluster=cluster)
    for index in range(runs):
        if cluster:
            row.runs.append(run_cluster_cycle(hosts, workers, delay))
        else:
            row.runs.append(run_cycle(deploy, workers, hosts, delay))
        first = row.runs[-1]["first"]
        print(
            f"  {scenario} {row.deploy} run {index + 1}/{runs}: "
            + ", ".join(f"{c} {row.runs[-1][c].seconds:.2f} s" for c in COLUMNS)
            + f" (service start {first.service_seconds:.2f} s)",
            file=sys.stderr,
            flush=True,
        )
    return row


def _s(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _x(value: float) -> str:
    return f"**{value:.0f}{TIMES}**" if value >= 10 else f"**{value:.2f}{TIMES}**"


def format_row(row: Row) -> str:
    services = "—" if row.deploy == "per-file" else _s(row.median("first", "service_seconds"))
    fan_out = _s(row.median("first")) if row.deploy == "per-file" else _s(row.fan_out())
    cells = [
        row.scenario,
        row.deploy,
        _s(row.median("first")),
        services,
        fan_out,
        _s(row.median("no_change")),
        _s(row.median("changed")),
        row.counts(),
        f"{row.peak_rss():.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def format_ratio(label: str, what: str, top: Row, bottom: Row) -> str:
    """A row of top ÷ bottom for every timed column."""

    def ratio(get: Callable[[Row], float]) -> str:
        return _x(get(top) / get(bottom))

    first = ratio(lambda r: r.median("first"))
    services = (
        "—"
        if "per-file" in (top.deploy, bottom.deploy)
        else ratio(lambda r: r.median("first", "service_seconds"))
    )
    fan_out = ratio(lambda r: r.median("first") if r.deploy == "per-file" else r.fan_out())
    cells = [
        label,
        what,
        first,
        services,
        fan_out,
        ratio(lambda r: r.median("no_change")),
        ratio(lambda r: r.median("changed")),
        "",
        "",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| Workers | Deploy | First deploy (s) | of which service start (s) | "
    "First deploy without service start (s) | No change (s) | One worker changed (s) | "
    "SSH execs/uploads per host: first · no change · changed | Peak RSS (MiB) |\n"
    "|---|---|--:|--:|--:|--:|--:|---|--:|"
)


def git_revision() -> str:
    """The commit measured, marked when the work tree has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    return revision + (" + uncommitted changes" if git("status", "--porcelain") else "")


def machine_info(rtt_ms: float, runs: int) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(
        next(
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
    )
    import pyinfra

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB RAM, "
        f"Linux {platform.release()}; Python {platform.python_version()}, "
        f"pyinfra {pyinfra.__version__}; code at {git_revision()}. "
        f"Added latency {rtt_ms:g} ms RTT (tests/bench/latency_proxy.py). "
        f"Median of {runs} run(s) per cell; load average at start: {load}."
    )


# --------------------------------------------------------------------------- main


@dataclasses.dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    baseline_sizes: tuple[int, ...]
    multi_hosts: int
    multi_workers: int
    runs: int
    rtt_ms: float
    cluster_machines: int = 0  # one homeserver on this many machines x multi_workers; 0: none


def run_benchmark(plan: Plan) -> str:
    delay = plan.rtt_ms / 2000
    lines = []
    ours: dict[int, Row] = {}
    for workers in plan.sizes:
        label = f"{workers:,}"
        ours[workers] = measure(label, OURS, workers, 1, plan.runs, delay)
        lines.append(format_row(ours[workers]))
        if workers in plan.baseline_sizes:
            baseline = measure(label, BASELINE, workers, 1, plan.runs, delay)
            lines.append(format_row(baseline))
            lines.append(format_ratio(label, "per-file ÷ ours", baseline, ours[workers]))
    smallest, largest = min(plan.sizes), max(plan.sizes)
    if largest != smallest:
        lines.append(
            format_ratio(
                f"{largest:,} vs {smallest}",
                f"ours: {largest:,} ÷ {smallest}",
                ours[largest],
                ours[smallest],
            )
        )
    if plan.multi_hosts > 1:
        label = f"{plan.multi_hosts} hosts {TIMES} {plan.multi_workers}"
        multi = measure(label, OURS, plan.multi_workers, plan.multi_hosts, plan.runs, delay)
        lines.append(format_row(multi))
        if plan.multi_workers in ours:
            lines.append(
                format_ratio(
                    label,
                    f"ours: {plan.multi_hosts} hosts ÷ 1 host",
                    multi,
                    ours[plan.multi_workers],
                )
            )
    if plan.cluster_machines > 1:
        label = f"{plan.cluster_machines} machines {TIMES} {plan.multi_workers} (one cluster)"
        cluster = measure(
            label, OURS, plan.multi_workers, plan.cluster_machines, plan.runs, delay, cluster=True
        )
        lines.append(format_row(cluster))
        if plan.multi_workers in ours:
            lines.append(
                format_ratio(
                    label,
                    f"ours: one cluster of {plan.cluster_machines} machines ÷ 1 machine",
                    cluster,
                    ours[plan.multi_workers],
                )
            )
    return "\n".join([HEADER, *lines])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 run per cell, 13 and 130 workers only, the per-file "
        "baseline at 13 only (one baseline run at 130 takes ~10 minutes)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (default 3)")
    parser.add_argument("--rtt-ms", type=float, default=24.0, help="added round-trip time")
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-file baseline")
    parser.add_argument("--output", type=Path, help="also write the table and machine line here")
    parser.add_argument(
        "--restarts-only",
        action="store_true",
        help="only the restart rows: rolling vs all-at-once under client load (stand-in and real "
        "Synapse; tests/bench/restarts.py)",
    )
    parser.add_argument("--no-restarts", action="store_true", help="skip the restart rows")
    parser.add_argument(
        "--cluster-plan-only",
        action="store_true",
        help="only the pure controller row: one cluster of 100 machines x 100 workers planned "
        "and rendered, time and memory (tests/bench/cluster_plan.py; no test hosts)",
    )
    parser.add_argument(
        "--cluster-only",
        action="store_true",
        help="only one homeserver on 8 machines x 130 workers (tests/bench/cluster_layout.py) "
        "and, side by side, 1 machine x 130 (with --quick: 1 run each, a few minutes)",
    )
    args = parser.parse_args(argv)
    if args.cluster_plan_only:
        print(cluster_rows(1 if args.quick else args.runs))
        return 0
    if problems := missing_prerequisites():
        parser.error("; ".join(problems))
    ensure_base_tree()
    # SIGTERM unwinds like Ctrl-C, so every test host and bridge is removed by its finally.
    signal.signal(signal.SIGTERM, _interrupt)
    quick = args.quick
    plan = Plan(
        sizes=(13, 130) if quick else (13, 130, 1000),
        baseline_sizes=() if args.no_baseline else (13,) if quick else (13, 130),
        multi_hosts=8,
        multi_workers=130,
        runs=1 if quick else args.runs,
        rtt_ms=args.rtt_ms,
        cluster_machines=8,
    )
    if args.cluster_only:
        plan = dataclasses.replace(plan, sizes=(130,), baseline_sizes=(), multi_hosts=0)
    info = machine_info(plan.rtt_ms, plan.runs)
    print(info, file=sys.stderr, flush=True)
    started = time.monotonic()
    tables = []
    if not args.restarts_only:
        tables.append(run_benchmark(plan))
    if not (args.no_restarts or args.cluster_only):
        tables.append(restart_table(plan.runs, plan.rtt_ms / 2000))
    table = "\n\n".join(tables)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = (
        f"{info}\n\n{table}\n\nBenchmark took {(time.monotonic() - started) / 60:.0f} min; "
        f"load average at the end: {load}.\n"
    )
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
