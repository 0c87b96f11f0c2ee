"""The status report's pure parts: the probe's output read back, compared with the plan, printed;
the probe's request codec and its one-command size at the largest plan."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploys.core.plan import build_plan
from deploys.core.render import health_urls
from deploys.core.settings import parse_settings
from deploys.core.status import host_status, parse_probe_output
from deploys.core.status_table import duration, listening, size, status_lines
from deploys.facts.status import PROBE_SOURCE, SynapseStatus
from deploys.host import status_probe
from tests.support.settings_data import make_data

MAIN = "matrix-synapse.service"
W0 = "matrix-synapse-worker@w-0.service"
W1 = "matrix-synapse-worker@w-1.service"
GHOST = "matrix-synapse-worker@ghost.service"
HEALTH = {
    MAIN: "http://127.0.0.1:8008/health",
    W0: "http://127.0.0.1:18000/health",
    W1: "http://127.0.0.1:18001/health",
}

# What the probe prints on a host where w-1 is stopped, a ghost worker runs, a stale one failed
# and a not-found one is only remembered.
OUTPUT = [
    "U matrix-synapse.service loaded active running Synapse main process",
    "U matrix-synapse.target loaded active active Synapse",
    "U matrix-synapse-worker@w-0.service loaded active running Synapse worker w-0",
    "U matrix-synapse-worker@w-1.service loaded inactive dead Synapse worker w-1",
    "U matrix-synapse-worker@ghost.service loaded active running Synapse worker ghost",
    "U matrix-synapse-worker@old.service loaded failed failed Synapse worker old",
    "U matrix-synapse-worker@gone.service not-found inactive dead matrix-synapse-worker@gone",
    f"P {MAIN} 114 7322 88604672 114",
    f"P {W0} 120 65 52428800 120,121",
    f"P {GHOST} 300 4 9437184 300",
    'L LISTEN 0 128 127.0.0.1:8008 0.0.0.0:* users:(("python",pid=114,fd=7))',
    'L LISTEN 0 128 127.0.0.1:9093 0.0.0.0:* users:(("python",pid=114,fd=8))',
    'L LISTEN 0 128 [::1]:8008 [::]:* users:(("python",pid=114,fd=9))',
    'L LISTEN 0 128 127.0.0.1:18000 0.0.0.0:* users:(("python",pid=121,fd=5))',
    'L LISTEN 0 128 127.0.0.1:19990 0.0.0.0:* users:(("python",pid=300,fd=5))',
    'L LISTEN 0 511 0.0.0.0:80 0.0.0.0:* users:(("nginx",pid=40,fd=5),("nginx",pid=41,fd=5))',
    f"H {MAIN} OK",
    f"H {W0} OK",
    f"H {W1} GET http://127.0.0.1:18001/health failed: [Errno 111] Connection refused",
    "E ss -ltnpH: something odd",
]


def test_the_probe_output_is_read_back_record_by_record() -> None:
    reading = parse_probe_output(OUTPUT)
    assert reading.units[MAIN] == ("loaded", "active", "running")
    assert reading.units["matrix-synapse-worker@gone.service"] == ("not-found", "inactive", "dead")
    assert reading.processes[W0].pid == 120 and reading.processes[W0].pids == (120, 121)
    assert reading.processes[MAIN].rss == 88604672 and reading.processes[MAIN].uptime == 7322
    assert reading.listening[114] == ("127.0.0.1:8008", "127.0.0.1:9093", "[::1]:8008")
    assert reading.listening[40] == reading.listening[41] == ("0.0.0.0:80",)
    assert reading.health[MAIN] is None and "refused" in (reading.health[W1] or "")
    assert reading.errors == ["ss -ltnpH: something odd"]


def test_planned_processes_and_unplanned_units_of_ours() -> None:
    status = host_status("h1", [MAIN, W0, W1], HEALTH, parse_probe_output(OUTPUT))
    main, w0, w1 = status.planned
    assert (main.ready, main.pid, main.listening) == (
        True,
        114,
        ("127.0.0.1:8008", "127.0.0.1:9093", "[::1]:8008"),
    )
    # The ports of every process of the unit (a child holds w-0's socket).
    assert (w0.ready, w0.pid, w0.listening) == (True, 120, ("127.0.0.1:18000",))
    assert (w1.ready, w1.active, w1.pid, w1.problem) == (False, False, None, "unit inactive (dead)")
    # The target is planned (not a process); a not-found unit systemd only remembers is not ours
    # to report; a failed one is loaded, so it is.
    assert [row.unit for row in status.unplanned] == [GHOST, "matrix-synapse-worker@old.service"]
    assert status.unplanned[0].listening == ("127.0.0.1:19990",)
    assert not any(row.ready for row in status.unplanned)
    assert status.summary == "3 planned, 2 active, 2 ready, 2 unplanned"


def test_an_active_process_that_does_not_answer_health_is_not_ready() -> None:
    output = [line for line in OUTPUT if not line.startswith(f"H {W0}")]
    output.append(f"H {W0} GET http://127.0.0.1:18000/health answered 503")
    status = host_status("h1", [MAIN, W0], HEALTH, parse_probe_output(output))
    assert status.planned[1].active and not status.planned[1].ready
    assert status.planned[1].problem == "GET http://127.0.0.1:18000/health answered 503"
    # A planned unit systemd does not know at all.
    missing = host_status("h1", ["matrix-synapse-worker@new.service"], {}, parse_probe_output([]))
    assert missing.planned[0].problem == "unit not-found"


def test_the_table_shows_every_row_the_reasons_and_the_summary() -> None:
    status = host_status("h1", [MAIN, W0, W1], HEALTH, parse_probe_output(OUTPUT))
    lines = status_lines(status)
    assert lines[0] == "h1:"
    assert lines[1].split() == ["UNIT", "STATE", "PID", "UPTIME", "RSS", "LISTENING", "READY"]
    assert lines[2].split() == [
        MAIN,
        "active",
        "(running)",
        "114",
        "2h02m",
        "84.5",
        "MiB",
        "127.0.0.1:8008,9093",
        "[::1]:8008",
        "yes",
    ]
    assert lines[4].split() == [W1, "inactive", "(dead)", "-", "-", "-", "-", "no"]
    assert lines[5].split()[-2:] == ["NOT", "PLANNED"] and lines[5].startswith(GHOST)
    assert f"  {W1}: unit inactive (dead)" in lines
    assert "  ss -ltnpH: something odd" in lines
    assert lines[-1] == "h1: 3 planned, 2 active, 2 ready, 2 unplanned"
    # Columns line up: every row's READY cell starts where the header's does.
    ready_at = lines[1].index("READY")
    assert all(len(line) > ready_at and line[ready_at - 1] == " " for line in lines[2:7])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600, "1h00m"), (90061, "1d01h")],
)
def test_durations(seconds: int, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("octets", "text"),
    [
        (512, "512 B"),
        (9 * 1024 * 1024 + 400 * 1024, "9.39 MiB"),
        (1020 * 1024, "1020 KiB"),
        (212 * 1024**2, "212 MiB"),
        (int(1.25 * 1024**3), "1.25 GiB"),
    ],
)
def test_sizes(octets: int, text: str) -> None:
    assert size(octets) == text


def test_listening_addresses_are_grouped_by_address() -> None:
    assert listening(("127.0.0.1:9093", "127.0.0.1:8008", "[::1]:8008")) == (
        "127.0.0.1:8008,9093 [::1]:8008"
    )
    assert listening(()) == ""


def test_the_request_round_trips_and_the_command_fits_one_argument_at_the_largest_plan() -> None:
    # 1,024 workers on one machine (the most the settings allow): the whole command is one
    # argument of `sh -c` on the host, which Linux caps at 128 KiB (MAX_ARG_STRLEN).
    data = make_data(
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_preset="one-of-each",
        matrix_synapse_workers_generic_workers_count=1000,
    )
    plan = build_plan(parse_settings(data), "h1")
    assert len(plan.workers) >= 1000
    health = health_urls(plan)
    request = status_probe.encode_request(["systemctl", "list-units"], health, 2.0)
    assert status_probe.decode_request(request) == {
        "list_units": ["systemctl", "list-units"],
        "health": health,
        "timeout": 2.0,
    }
    command = str(SynapseStatus().command(health=health).get_raw_value())
    assert command.startswith("python3 -B -c ")
    assert len(command) < 40_000, len(command)


def test_the_probe_travels_alone() -> None:
    # It is sent as source on the command line: nothing of host/ is there to import.
    assert "from ." not in PROBE_SOURCE and "import host" not in PROBE_SOURCE


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_probe_checks_health_as_readiness_does(health_server: str) -> None:
    assert status_probe.health_problem(f"{health_server}/health", 2) is None
    assert status_probe.health_problem(f"{health_server}/other", 2) == (
        f"GET {health_server}/other answered 503"
    )
    closed = status_probe.health_problem("http://127.0.0.1:1/health", 2)
    assert closed is not None and "failed" in closed


def test_the_probe_finds_unit_cgroups_in_nested_slices_and_the_main_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "unified"
    main_dir = root / "system.slice" / MAIN
    worker_dir = root / "system.slice" / "system-matrix\\x2dsynapse\\x2dworker.slice" / W0
    for directory in (main_dir, worker_dir, root / "system.slice" / "ssh.service"):
        directory.mkdir(parents=True)
    monkeypatch.setattr(status_probe, "CGROUP_ROOTS", (str(root), str(tmp_path / "none")))
    assert status_probe.unit_cgroups({MAIN, W0, W1}) == {MAIN: str(main_dir), W0: str(worker_dir)}

    # A unit holding this process and a child of it: the main process is the parent.
    with subprocess.Popen(["sleep", "30"]) as child:
        try:
            (worker_dir / "cgroup.procs").write_text(f"{child.pid}\n{os.getpid()}\n")
            with open("/proc/uptime") as uptime:
                now = float(uptime.read().split()[0])
            pid, seconds, rss, pids = status_probe.unit_processes(str(worker_dir), now) or (0,) * 4
            assert (pid, pids) == (os.getpid(), sorted([os.getpid(), child.pid]))
            assert 0 <= seconds < 3600 and rss > 1024 * 1024
        finally:
            child.kill()
    (main_dir / "cgroup.procs").write_text("")
    assert status_probe.unit_processes(str(main_dir), now) is None
