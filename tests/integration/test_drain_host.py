"""Drain before stop on a real systemd host with the stand-in and Debian's nginx (issue 11): a
client inside the host polls four generic workers through nginx while a shared change restarts
every process in waves. Every answer is 200, and nginx never even tried a stopped worker (its
access log shows no failed try): each wave's workers were marked ``down`` and nginx reloaded
before they stopped, and put back once ready. The routing file ends as the managed one, so the
next run changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    Run,
    assert_no_changes,
    front_workers,
    install_standin,
    pyinfra,
    write_inventory,
)
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

ACCESS_LOG = "/var/log/nginx/matrix-synapse-workers.access.log"
ROUTING = "/etc/nginx/conf.d/matrix-synapse-workers.conf"
PROBE = "/root/probe.py"
PROBE_OUT = "/root/probe.json"
STOP = "/root/probe.stop"

# Polls /sync (the generic workers, by user) as 12 users until STOP exists, then writes every
# (status, worker) it saw. Over keep-alive connections, like a browser: nginx's reload closes the
# idle ones, and a request that meets such a close before any answer is sent again once on a new
# connection (RFC 9112 9.3.1), counted as "stale keep-alive".
PROBE_SCRIPT = f"""
import base64, collections, http.client, json, os, time
users = ["user%d" % i for i in range(12)]
token = {{u: "syt_%s_x_y" % base64.b64encode(u.encode()).decode().rstrip("=") for u in users}}
seen = collections.Counter()
conn, used = None, False
def get(user):
    global conn, used
    if conn is None:
        conn, used = http.client.HTTPConnection("127.0.0.1", 8088, timeout=10), False
    conn.request("GET", "/_matrix/client/v3/sync?timeout=0",
                 headers={{"Authorization": "Bearer " + token[user]}})
    r = conn.getresponse()
    used = True
    return r.status, r.read().decode(errors="replace")
while not os.path.exists({STOP!r}):
    for u in users:
        try:
            try:
                status, body = get(u)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not used:
                    raise
                seen["stale keep-alive"] += 1
                conn = None
                status, body = get(u)
            seen["%d %s" % (status, body if status == 200 else body[:80])] += 1
        except OSError as error:
            seen["error " + type(error).__name__] += 1
            conn = None
    time.sleep(0.01)
with open({PROBE_OUT!r}, "w") as f:
    json.dump(seen, f)
"""


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def settings(upload: str, workers: int = 4) -> dict[str, Any]:
    """Generic workers, half of them per wave; ``upload`` is in homeserver.yaml: a change
    restarts every process."""
    return {
        **front_workers(workers),
        "matrix_synapse_restart_batch_percent": 50,
        "matrix_synapse_configuration_extension": {"max_upload_size": upload},
    }


def deploy(folder: Path, host: TestHost, data: dict[str, Any], *args: str) -> Run:
    folder.mkdir(parents=True, exist_ok=True)
    inventory = write_inventory(folder / "inventory.py", [(host, data)])
    return pyinfra(folder, inventory, *args, timeout=600)


def polled_through(host: TestHost, deploy_it: Any) -> tuple[Run, dict[str, int], list[str]]:
    """Run ``deploy_it()`` while the probe polls; its answers and nginx's access log lines."""
    host.ssh(f"cat > {PROBE}", input=PROBE_SCRIPT)
    host.ssh(f": > {ACCESS_LOG}; rm -f {STOP} {PROBE_OUT}")
    host.ssh(f"nohup python3 {PROBE} > /root/probe.log 2>&1 &")
    run = deploy_it()
    host.ssh(f"touch {STOP}")
    host.ssh(f"for i in $(seq 100); do test -e {PROBE_OUT} && break; sleep 0.1; done")
    seen = json.loads(host.ssh(f"cat {PROBE_OUT}").stdout)
    seen.pop("stale keep-alive", None)  # nginx's reloads: sent again on a new connection
    log = host.ssh(f"grep ' upstream=synapse_generic ' {ACCESS_LOG}").stdout.splitlines()
    return run, seen, log


def assert_served(seen: dict[str, int], log: list[str], workers: int) -> None:
    """Every answer 200 from a front worker, and nginx never tried a server that failed."""
    answered = {key for key in seen if key.startswith("200 ")}
    assert set(seen) == answered, seen  # no 5xx, no connection error
    fronts = {f'200 {{"standin": "front-{i}"}}' for i in range(workers)}
    assert answered <= fronts and sum(seen.values()) > 100, seen
    assert len(log) >= sum(seen.values())
    tried_a_stopped_worker = [line for line in log if "upstream_status=200 " not in line]
    assert not tried_a_stopped_worker, tried_a_stopped_worker[:5]


def test_a_rolling_restart_behind_nginx_drains_each_wave_and_no_request_fails(
    tmp_path: Path, host: TestHost
) -> None:
    first = deploy(tmp_path, host, settings("10M"), "-y")
    assert first.returncode == 0, first.output[-3000:]
    managed = host.ssh(f"sha256sum {ROUTING}").stdout.split()[0]
    run, seen, log = polled_through(host, lambda: deploy(tmp_path, host, settings("20M"), "-y"))
    assert run.returncode == 0, run.output[-3000:]
    assert_served(seen, log, 4)
    assert host.ssh(f"sha256sum {ROUTING}").stdout.split()[0] == managed
    assert " down;" not in host.ssh(f"cat {ROUTING}").stdout
    assert_no_changes(deploy(tmp_path, host, settings("20M")), host.name)


def test_workers_added_during_a_rolling_restart_get_requests_only_once_they_run(
    tmp_path: Path, host: TestHost
) -> None:
    """4 -> 6 workers with a shared change: main's wave reloads nginx with the new file, whose
    two new workers start in a later wave; they stay down until then."""
    first = deploy(tmp_path, host, settings("10M"), "-y")
    assert first.returncode == 0, first.output[-3000:]
    run, seen, log = polled_through(
        host, lambda: deploy(tmp_path, host, settings("20M", workers=6), "-y")
    )
    assert run.returncode == 0, run.output[-3000:]
    assert_served(seen, log, 6)
    assert " down;" not in host.ssh(f"cat {ROUTING}").stdout
    assert_no_changes(deploy(tmp_path, host, settings("20M", workers=6)), host.name)
