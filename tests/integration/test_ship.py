"""Ship the plan over real SSH to real systemd hosts (systemd-nspawn), with a stand-in Synapse."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    apply_commands,
    assert_no_changes,
    front_workers,
    host_snapshot,
    install_standin,
    main_pids,
    pyinfra,
    write_inventory,
)
from tests.support.testhost import TestHost
from tests.support.verifying import assert_verify_passes_with_live_checks

pytestmark = pytest.mark.integration

WORKERS_ON = {"matrix_synapse_workers_enabled": True}


# Files that are not ours, under every directory the deploy manages: a dotfile and a subfolder
# that match no rule of ours, files not ours by name, an operator's own conf.d file and nginx site.
FOREIGN_FILES = {
    "/etc/matrix-synapse/notes.txt": "an operator's notes\n",
    "/etc/matrix-synapse/workers/.notes.yaml": "worker_app: synapse.app.generic_worker\n",
    "/etc/matrix-synapse/workers/old/x.yaml": "worker_app: synapse.app.generic_worker\n",
    "/etc/matrix-synapse/workers/README": "hand-written notes\n",
    "/etc/matrix-synapse/conf.d/local.yaml": "# an operator's own setting\nmax_upload_size: 100M\n",
    "/etc/matrix-synapse/secrets/README": "where the secrets come from\n",
    "/etc/systemd/system/matrix-synapse.service.d/README": "why this unit is special\n",
    "/etc/nginx/conf.d/local-site.conf": "# an operator's own nginx site\n",
}


def put_foreign_files(host: TestHost) -> str:
    """Create FOREIGN_FILES on the host; returns their checksums and modes, to compare later."""
    for path, content in FOREIGN_FILES.items():
        host.ssh(f"mkdir -p $(dirname {path}) && cat > {path}", input=content)
    return foreign_files(host)


def foreign_files(host: TestHost) -> str:
    paths = " ".join(FOREIGN_FILES)
    return host.ssh(f"sha256sum {paths}; stat -c '%n %a %U %G %Y' {paths}").stdout


def redis_subscribers(host: TestHost, server_name: str = "example.org") -> int:
    return int(host.ssh(f"redis-cli PUBSUB NUMSUB {server_name}").stdout.split()[-1])


def http_get(host: TestHost, url: str) -> tuple[int, str, str]:
    """(status, X-Synapse-Upstream, body) of a GET from inside the host (it has no curl)."""
    script = (
        "import sys, urllib.request as u\n"
        "r = u.urlopen(sys.argv[1], timeout=10)\n"
        "print(r.status, r.headers.get('X-Synapse-Upstream'), r.read().decode())\n"
    )
    status, upstream, body = host.ssh(f"python3 - {url}", input=script).stdout.strip().split(" ", 2)
    return int(status), upstream, body


def generic(count: int) -> dict[str, Any]:
    return {**WORKERS_ON, "matrix_synapse_workers_generic_workers_count": count}


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def deploy(tmp_path: Path, host: TestHost, data: dict[str, Any], *args: str):
    inventory = write_inventory(tmp_path / "inventory.py", [(host, data)])
    return pyinfra(tmp_path, inventory, *args)


def unit_states(host: TestHost, pattern: str = "matrix-synapse*") -> dict[str, tuple[str, str]]:
    out = host.ssh(f"systemctl list-units --all --plain --no-legend '{pattern}'").stdout
    enabled = set(
        host.ssh("ls /etc/systemd/system/*.wants/ | grep matrix-synapse || true").stdout.split()
    )
    return {
        line.split()[0]: (line.split()[2], "enabled" if line.split()[0] in enabled else "disabled")
        for line in out.splitlines()
        if line.strip()
    }


def test_first_deploy_creates_everything_and_a_rerun_changes_nothing(
    tmp_path: Path, host: TestHost
) -> None:
    first = deploy(tmp_path, host, WORKERS_ON, "-y")
    assert first.returncode == 0, first.output
    assert len(apply_commands(first, host.name)) == 1
    workers = host.ssh("ls /etc/matrix-synapse/workers").stdout.split()
    assert len(workers) == 16
    states = unit_states(host)
    assert len(states) == 16 + 2
    assert all(s == ("active", "enabled") for s in states.values()), states
    perms = host.ssh(
        "stat -c '%a %U %G' /etc/matrix-synapse/homeserver.yaml "
        "/etc/matrix-synapse/secrets/replication "
        "/etc/systemd/system/matrix-synapse-worker@.service"
    ).stdout.split("\n")
    assert perms[:3] == [
        "640 root matrix-synapse",
        "600 matrix-synapse matrix-synapse",
        "644 root root",
    ]
    # The defaults were on: every process subscribed to Redis, and nginx routes to the workers.
    assert redis_subscribers(host) == 16 + 1
    assert http_get(host, "http://127.0.0.1:8008/health")[::2] == (200, "OK")
    # one-of-each: the generic worker serves /sync, the media repository worker media.
    for path, worker in (
        ("/_matrix/client/v3/sync", "generic-0"),
        ("/_matrix/media/v3/config", "media-repository-0"),
    ):
        status, upstream, body = http_get(host, f"http://127.0.0.1:8088{path}")
        assert (status, body) == (200, f'{{"standin": "{worker}"}}'), (path, upstream)

    foreign = put_foreign_files(host)
    before = host_snapshot(host)
    preview = deploy(tmp_path, host, WORKERS_ON, "--dry", "--diff")
    assert_no_changes(preview, host.name, commands=2)  # --dry: machine-id and one fact
    assert "Will " not in preview.output
    second = deploy(tmp_path, host, WORKERS_ON)  # normal run: prepare + execute
    # machine-id, then the state fact once per pyinfra pass: no apply, no systemctl write.
    assert_no_changes(second, host.name, commands=3)
    for command in second.command_lines[host.name][1:]:
        assert "sha256sum" in command and "systemctl list-units" in command, command
    assert host_snapshot(host) == before
    assert foreign_files(host) == foreign


def test_changing_one_worker_restarts_exactly_that_worker(tmp_path: Path, host: TestHost) -> None:
    def workers(port: int) -> dict[str, Any]:
        return front_workers(5, ports={2: port})

    assert deploy(tmp_path, host, workers(15002), "-y").returncode == 0
    before = main_pids(host)
    run = deploy(tmp_path, host, workers(15502), "-y")
    assert run.returncode == 0, run.output
    after = main_pids(host)
    changed = {unit for unit in before if before[unit] != after[unit]}
    assert changed == {"matrix-synapse-worker@front-2.service"}
    assert "port: 15502" in host.ssh("cat /etc/matrix-synapse/workers/front-2.yaml").stdout
    assert http_get(host, "http://127.0.0.1:15502/health")[::2] == (200, "OK")
    assert_no_changes(deploy(tmp_path, host, workers(15502)), host.name)


def test_shrinking_from_130_to_10_workers_removes_exactly_the_others(
    tmp_path: Path, host: TestHost
) -> None:
    assert deploy(tmp_path, host, generic(130), "-y").returncode == 0
    # garbage that is not ours stays untouched
    host.ssh("touch /etc/matrix-synapse/workers/README.txt")
    run = deploy(tmp_path, host, generic(10), "-y")
    assert run.returncode == 0, run.output
    files = set(host.ssh("ls /etc/matrix-synapse/workers").stdout.split())
    generic_files = {f for f in files if f.startswith("generic-")}
    assert generic_files == {f"generic-{i}.yaml" for i in range(10)}
    assert "README.txt" in files
    states = unit_states(host, "matrix-synapse-worker@generic-*")
    assert set(states) == {f"matrix-synapse-worker@generic-{i}.service" for i in range(10)}
    assert all(s == ("active", "enabled") for s in states.values())
    links = host.ssh("ls /etc/systemd/system/matrix-synapse.target.wants/").stdout.split()
    assert sum(link.startswith("matrix-synapse-worker@generic-") for link in links) == 10
    assert redis_subscribers(host) == 10 + 15 + 1
    # The stale files went in one run: the next one has nothing left to remove.
    assert_no_changes(deploy(tmp_path, host, generic(10)), host.name)


def test_dry_diff_names_every_change_and_leaves_the_host_identical(
    tmp_path: Path, host: TestHost
) -> None:
    assert deploy(tmp_path, host, generic(4), "-y").returncode == 0
    before = host_snapshot(host)
    run = deploy(
        tmp_path,
        host,
        {
            **generic(2),
            "matrix_synapse_log_level": "WARNING",
            "matrix_synapse_database_password": "pw-never-printed",
        },
        "--dry",
        "--diff",
    )
    assert run.returncode == 0, run.output
    assert run.output.count("Will modify /etc/matrix-synapse/log.yaml") == 1
    assert "-   level: INFO" in run.output and "+   level: WARNING" in run.output
    assert "Will create /etc/matrix-synapse/secrets/database.pgpass" in run.output
    for i in (2, 3):
        assert f"Will remove /etc/matrix-synapse/workers/generic-{i}.yaml" in run.output
    # every worker file gains the passfile line
    assert run.output.count("Will modify /etc/matrix-synapse/workers/") == 2 + 15
    assert "pw-never-printed" not in run.output
    assert apply_commands(run, host.name) == []
    assert host_snapshot(host) == before
    # A normal run (prepare, confirm, execute) prints each diff once, not once per pass.
    applied = deploy(
        tmp_path, host, {**generic(2), "matrix_synapse_log_level": "WARNING"}, "--diff"
    )
    assert applied.returncode == 0, applied.output
    assert applied.output.count("Will modify /etc/matrix-synapse/log.yaml") == 1
    assert "level: WARNING" in host.ssh("cat /etc/matrix-synapse/log.yaml").stdout
    assert_no_changes(
        deploy(tmp_path, host, {**generic(2), "matrix_synapse_log_level": "WARNING"}), host.name
    )


def test_two_deploys_at_once_serialise_and_converge(tmp_path: Path, host: TestHost) -> None:
    runs: list[Any] = [None, None]

    def go(index: int) -> None:
        folder = tmp_path / f"run{index}"
        folder.mkdir()
        runs[index] = deploy(folder, host, generic(30), "-y")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in runs), [r.output for r in runs]
    states = unit_states(host)
    assert len(states) == 30 + 15 + 2
    assert all(s == ("active", "enabled") for s in states.values())
    assert redis_subscribers(host) == 30 + 15 + 1
    assert_no_changes(deploy(tmp_path, host, generic(30)), host.name)


def test_a_held_lock_fails_with_a_clear_message_and_changes_nothing(
    tmp_path: Path, host: TestHost
) -> None:
    host.ssh(
        "mkdir -p /run/lock && (flock /run/lock/pyinfra-synapse.lock sleep 60 >/dev/null 2>&1 &)"
    )
    run = deploy(tmp_path, host, {**WORKERS_ON, "matrix_synapse_deploy_lock_timeout": 2}, "-y")
    assert run.returncode != 0
    assert "another pyinfra-synapse deploy holds /run/lock/pyinfra-synapse.lock" in run.output
    assert host.ssh("test -e /etc/matrix-synapse/homeserver.yaml", check=False).returncode == 1


def test_two_hosts_in_one_run_get_their_own_plans(tmp_path: Path, testhost_factory: Any) -> None:
    a, b = testhost_factory(2)
    for h in (a, b):
        install_standin(h)
    # Two homeservers (hosts sharing a matrix_domain would be one cluster: see test_cluster.py).
    homeservers = {a: ("a.example.org", 3), b: ("b.example.org", 7)}
    inventory = write_inventory(
        tmp_path / "inventory.py",
        [
            (h, {**generic(count), "matrix_domain": name})
            for h, (name, count) in homeservers.items()
        ],
    )
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode == 0, run.output
    for h, (name, count) in homeservers.items():
        names = h.ssh("ls /etc/matrix-synapse/workers").stdout.split()
        assert sum(n.startswith("generic-") for n in names) == count
        assert redis_subscribers(h, name) == count + 15 + 1
    rerun = pyinfra(tmp_path, inventory)
    for h in (a, b):
        assert_no_changes(rerun, h.name)


def test_non_root_user_with_sudo(tmp_path: Path, testhost: TestHost) -> None:
    install_standin(testhost, user="deploy")
    inventory = write_inventory(
        tmp_path / "inventory.py", [(testhost, {**generic(3), "_sudo": True})], user="deploy"
    )
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode == 0, run.output
    assert (
        testhost.ssh("stat -c '%a %U %G' /etc/matrix-synapse/workers/generic-2.yaml").stdout.strip()
        == "640 root matrix-synapse"
    )
    assert_no_changes(pyinfra(tmp_path, inventory), testhost.name)


def test_bad_settings_stop_the_run_before_any_host_changes(
    tmp_path: Path, testhost_factory: Any
) -> None:
    a, b = testhost_factory(2)
    inventory = write_inventory(
        tmp_path / "inventory.py",
        [
            (a, {**generic(3), "matrix_domain": "a.example.org"}),
            (
                b,
                {
                    **generic(3),
                    "matrix_domain": "b.example.org",
                    "matrix_synapse_workers_preset": "one-of-eahc",
                },
            ),
        ],
    )
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode != 0
    assert "matrix_synapse_workers_preset = 'one-of-eahc'" in run.output
    for h in (a, b):
        assert h.ssh("test -e /etc/matrix-synapse", check=False).returncode == 1


@pytest.mark.parametrize("workers", [13, 130, 1000])
def test_round_trips_do_not_grow_with_workers(tmp_path: Path, host: TestHost, workers: int) -> None:
    # one federation sender (little-federation-helper) plus generic workers
    data = {**generic(workers - 1), "matrix_synapse_workers_preset": "little-federation-helper"}
    first = deploy(tmp_path, host, data)
    assert first.returncode == 0, first.output
    # normal runs: first = machine-id + fact (prepare) + fact + apply (archive on stdin)...
    assert first.commands[host.name] == 4, first.command_lines
    assert first.uploads.get(host.name, 0) == 0
    assert len(apply_commands(first, host.name)) == 1
    assert redis_subscribers(host) == workers + 1
    # ...rerun = machine-id + fact twice, nothing applied.
    assert_no_changes(deploy(tmp_path, host, data), host.name, commands=3)


def test_verify_suite_passes_against_the_deployed_host(tmp_path: Path, host: TestHost) -> None:
    inventory = write_inventory(tmp_path / "inventory.py", [(host, generic(5))])
    assert pyinfra(tmp_path, inventory, "-y").returncode == 0
    # Every check, the live ones included (the stand-in listens, answers /health and subscribes
    # to Redis; nginx routes to it), as many as the host's own config files call for.
    assert_verify_passes_with_live_checks(host, inventory)
