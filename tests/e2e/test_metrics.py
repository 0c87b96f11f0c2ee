"""Prometheus service discovery against the real Synapse: every target in the deployed file_sd
file answers ``/_synapse/metrics`` with Synapse's metrics, from the process its labels name.

Synapse exposes no metric that names its worker, so "the right process" is checked twice: the
PID listening on the target's port (``ss -ltnp``) is the MainPID of the unit the ``worker`` label
names, and the metrics body's ``process_start_time_seconds`` is that PID's start time
(``/proc/PID/stat``), so the body was produced by that process.

A real Prometheus (Debian's package, in a tree derived from the Synapse one) then reads the file
through the README's scrape config: every target is up, with the file's labels in place of the
job name and the address.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import build_plan
from deploys.core.settings import parse_settings
from deploys.host.units import MAIN, MAIN_UNIT, worker_unit
from tests.support.deploying import assert_no_changes, main_pids, pyinfra, write_inventory
from tests.support.settings_data import make_data
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost
from tests.support.testhost_trees import ensure_derived_tree
from tests.support.verifying import assert_verify_passes_with_live_checks

pytestmark = pytest.mark.integration

FILE_SD = "/etc/prometheus/file_sd/synapse.json"
# Five worker types, six workers: small enough to boot fast, enough to tell jobs apart.
SETTINGS = {
    **E2E_SETTINGS,
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_generic_workers_count": 1,
    "matrix_synapse_workers_pusher_workers_count": 1,
    "matrix_synapse_workers_media_repository_workers_count": 1,
    "matrix_synapse_workers_stream_writer_events_stream_workers_count": 1,
    "matrix_synapse_workers_stream_writer_typing_stream_workers_count": 1,
}

# Runs in the guest: scrape every target of the file; each process's start time from /proc.
SCRAPE = r"""
import json, os, sys, urllib.request
groups = json.load(open(sys.argv[1]))
ticks = os.sysconf("SC_CLK_TCK")
btime = next(int(l.split()[1]) for l in open("/proc/stat") if l.startswith("btime "))
scraped = []
for group in groups:
    (address,) = group["targets"]
    with urllib.request.urlopen(f"http://{address}/_synapse/metrics", timeout=60) as response:
        status, body = response.status, response.read().decode()
    scraped.append({"address": address, "labels": group["labels"], "status": status,
                    "lines": [l for l in body.splitlines() if l.startswith(
                        ("synapse_build_info{", "process_start_time_seconds "))]})
starts = {}
for pid in sys.argv[2:]:
    stat = open(f"/proc/{pid}/stat").read()
    starts[pid] = int(stat.rsplit(")", 1)[1].split()[19]) / ticks + btime
print(json.dumps({"scraped": scraped, "starts": starts}))
"""
SS_LINE = re.compile(r"\s(\S+):(\d+)\s.*users:\(\(.*?pid=(\d+),")


def unit_of(worker: str) -> str:
    return MAIN_UNIT if worker == MAIN else worker_unit(worker)


def listening_pids(host: TestHost) -> dict[int, set[int]]:
    """port -> PIDs listening on it (TCP), from ``ss -ltnp`` in the guest."""
    pids: dict[int, set[int]] = {}
    for line in host.ssh("ss -ltnpH").stdout.splitlines():
        match = SS_LINE.search(line)
        if match:
            pids.setdefault(int(match[2]), set()).add(int(match[3]))
    return pids


def check_every_target(host: TestHost, settings: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Scrape every target of the deployed file; assert each is the planned process's metrics
    listener, answered by that process with Synapse's metrics. Returns labels by worker."""
    plan = build_plan(parse_settings(make_data(**settings)), "host")
    planned = {p.name: p.listener("metrics").port for p in plan.processes}  # type: ignore[union-attr]
    stat = host.ssh(f"stat -c '%a %U %G' {FILE_SD}").stdout.split()
    assert stat == ["644", "root", "root"]
    pids = main_pids(host)
    unit_pids = {w: pids[unit_of(w)] for w in planned}
    assert all(pid > 0 for pid in unit_pids.values()), pids
    out = host.ssh(
        f"python3 -c {shlex.quote(SCRAPE)} {FILE_SD} "
        + " ".join(str(p) for p in unit_pids.values()),
        timeout=300,
    ).stdout
    result = json.loads(out)
    scraped = {s["labels"]["worker"]: s for s in result["scraped"]}
    assert len(scraped) == len(result["scraped"]), "a worker listed twice"
    assert set(scraped) == set(planned)
    listeners = listening_pids(host)
    for worker, s in scraped.items():
        address, port = s["address"].rsplit(":", 1)
        assert (address, int(port)) == ("127.0.0.1", planned[worker]), s
        assert s["status"] == 200, s
        build_info = [x for x in s["lines"] if x.startswith("synapse_build_info{")]
        assert len(build_info) == 1 and 'version="1.163.2"' in build_info[0], s
        pid = unit_pids[worker]
        assert listeners.get(int(port)) == {pid}, (worker, port, listeners.get(int(port)), pid)
        (start_line,) = [x for x in s["lines"] if x.startswith("process_start_time_seconds ")]
        started = float(start_line.split()[1])
        assert abs(started - result["starts"][str(pid)]) < 0.02, (worker, started, result)
    return {w: s["labels"] for w, s in scraped.items()}


@pytest.fixture(scope="module")
def synapse_tree() -> Path:
    return ensure_synapse_tree()


@pytest.fixture(scope="module")
def prometheus_tree(synapse_tree: Path) -> Path:
    """The Synapse tree plus Debian's prometheus, not started at boot (the test starts it)."""
    commands = [
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends prometheus",
        "systemctl disable prometheus",
    ]
    return ensure_derived_tree("synapse-prometheus", commands, version="1", base=synapse_tree)


# The README's scrape config (section "Metrics"), with a short interval for the test.
PROMETHEUS_YML = f"""
global:
  scrape_interval: 2s
scrape_configs:
  - job_name: synapse
    metrics_path: /_synapse/metrics
    file_sd_configs:
      - files: [{FILE_SD}]
"""


def test_every_file_sd_target_is_its_process_metrics(
    tmp_path: Path, testhost_factory: Any, synapse_tree: Path
) -> None:
    (host,) = testhost_factory(1, tree=synapse_tree)
    inventory = write_inventory(tmp_path / "inventory.py", [(host, SETTINGS)], standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]

    labels = check_every_target(host, SETTINGS)
    assert len(labels) == 7  # main and six workers
    assert {w: (x["job"], x["index"]) for w, x in labels.items()} == {
        "main": ("synapse", "0"),
        "generic-0": ("generic_worker", "0"),
        "stream-writer-0-events": ("stream_writer", "0"),
        "stream-writer-1-typing": ("stream_writer", "1"),
        "federation-sender-0": ("federation_sender", "0"),
        "pusher-0": ("pusher", "0"),
        "media-repository-0": ("media_repository", "0"),
    }
    assert {x["instance"] for x in labels.values()} == {"example.org"}
    assert_verify_passes_with_live_checks(host, inventory)  # its scrape of every target too
    assert_no_changes(pyinfra(tmp_path, inventory), host.name, commands=None)

    # A worker added: the same run lists it, and its target answers; nothing else restarts.
    before = main_pids(host)
    grown = {**SETTINGS, "matrix_synapse_workers_generic_workers_count": 2}
    inventory = write_inventory(tmp_path / "inventory.py", [(host, grown)], standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    labels = check_every_target(host, grown)
    assert (labels["generic-1"]["job"], labels["generic-1"]["index"]) == ("generic_worker", "1")
    after = main_pids(host)
    assert {u for u in before if before[u] != after.get(u)} == set()

    # And removed: gone from the file in the same run, its port closed.
    inventory = write_inventory(tmp_path / "inventory.py", [(host, SETTINGS)], standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    labels = check_every_target(host, SETTINGS)
    assert "generic-1" not in labels
    assert 25001 not in listening_pids(host)
    assert_no_changes(pyinfra(tmp_path, inventory), host.name, commands=None)


def prometheus_api(host: TestHost, path: str) -> Any:
    out = host.ssh(f"curl -sf {shlex.quote('http://127.0.0.1:9090/api/v1/' + path)}").stdout
    answer = json.loads(out)
    assert answer["status"] == "success", answer
    return answer["data"]


def test_prometheus_scrapes_every_target_with_the_files_labels(
    tmp_path: Path, testhost_factory: Any, prometheus_tree: Path
) -> None:
    (host,) = testhost_factory(1, tree=prometheus_tree)
    inventory = write_inventory(tmp_path / "inventory.py", [(host, SETTINGS)], standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    groups = json.loads(host.ssh(f"cat {FILE_SD}").stdout)
    host.ssh(f"cat > /etc/prometheus/test.yml <<'EOF'\n{PROMETHEUS_YML}EOF")
    host.ssh("install -d -o prometheus -g prometheus /var/lib/prometheus/test")
    host.ssh(
        "systemd-run --unit=test-prometheus --uid=prometheus /usr/bin/prometheus "
        "--config.file=/etc/prometheus/test.yml --storage.tsdb.path=/var/lib/prometheus/test "
        "--web.listen-address=127.0.0.1:9090"
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            active = prometheus_api(host, "targets?state=active")["activeTargets"]
        except Exception:  # not listening yet
            active = []
        if len(active) == len(groups) and all(t["health"] == "up" for t in active):
            break
        failed = host.ssh("systemctl is-failed -q test-prometheus", check=False).returncode == 0
        if failed or time.monotonic() > deadline:
            journal = host.ssh("journalctl -u test-prometheus --no-pager -n 40", check=False)
            pytest.fail(f"Prometheus targets not all up: {active}\n{journal.stdout}")
        time.sleep(1)
    scraped = {t["labels"]["worker"]: t for t in active}
    for group in groups:
        target = scraped[group["labels"]["worker"]]
        assert target["scrapeUrl"] == f"http://{group['targets'][0]}/_synapse/metrics"
        # The file's job and instance replace the job name and the address.
        assert target["labels"] == group["labels"], (target["labels"], group["labels"])
    series = prometheus_api(host, "query?query=synapse_build_info")["result"]
    assert sorted((r["metric"]["job"], r["metric"]["index"]) for r in series) == sorted(
        (g["labels"]["job"], g["labels"]["index"]) for g in groups
    )
    assert {r["metric"]["instance"] for r in series} == {"example.org"}
