"""One homeserver on three machines (issue 13), deployed through the pyinfra CLI to three test
hosts on a private bridge network, with the stand-in for Synapse: main, Redis and nginx on the
first; stream writers and generic workers on the second; a federation sender, a pusher and a
media repository worker on the third. Real SSH, systemd, Redis and nginx; the stand-in reads its
config files, subscribes to Redis where they say (with the password) and answers /health.

Run: .venv/bin/pytest tests/integration/test_cluster.py -v
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    STANDIN_SETTINGS,
    apply_commands,
    assert_no_changes,
    install_standin,
    pyinfra,
    write_inventory,
)
from tests.support.settings_data import CLUSTER_SECRETS as SECRETS
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

Factory = Callable[..., list[TestHost]]
WORKERS_ON = {"matrix_synapse_workers_enabled": True, **SECRETS}
# No worker unless a count says so (the preset's federation sender is set to 0).
NONE = {
    **WORKERS_ON,
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_federation_sender_workers_count": 0,
}


def machine(host: TestHost, role: str, **counts: int) -> dict[str, Any]:
    data = {
        **NONE,
        "matrix_synapse_role": role,
        "matrix_synapse_private_address": host.address,
    }
    for key, count in counts.items():
        data[f"matrix_synapse_workers_{key}_workers_count"] = count
    return data


def units(host: TestHost) -> dict[str, str]:
    """Every matrix-synapse* unit systemd has loaded -> its active state."""
    out = host.ssh("systemctl list-units --all --plain --no-legend 'matrix-synapse*'").stdout
    return {line.split()[0]: line.split()[2] for line in out.splitlines() if line.strip()}


def active(host: TestHost) -> set[str]:
    return {u for u, state in units(host).items() if state == "active"}


def redis_numsub(host: TestHost, main: TestHost, password: str | None) -> str:
    """PUBSUB NUMSUB example.org on main's Redis at its private address, from ``host``."""
    auth = f"r.sendall(cmd('AUTH', {password!r})); print(r.recv(100));" if password else ""
    script = (
        "import socket\n"
        "def cmd(*w): return b''.join([b'*%d\\r\\n' % len(w)] + "
        "[b'$%d\\r\\n%s\\r\\n' % (len(x), x.encode()) for x in w])\n"
        f"r = socket.create_connection(({main.address!r}, 6379), 5)\n"
        f"{auth}\n"
        "r.sendall(cmd('PUBSUB', 'NUMSUB', 'example.org')); print(r.recv(200))\n"
    )
    return host.ssh("python3 -", input=script).stdout


def subscribers(main: TestHost) -> int:
    reply = redis_numsub(main, main, SECRETS["matrix_synapse_redis_password"])
    return int(reply.rsplit(":", 1)[1].split("\\r")[0])


def http_get(host: TestHost, url: str) -> tuple[int, str, str]:
    script = (
        "import sys, urllib.request as u\n"
        "r = u.urlopen(sys.argv[1], timeout=10)\n"
        "print(r.status, r.headers.get('X-Synapse-Upstream'), r.read().decode())\n"
    )
    status, upstream, body = host.ssh(f"python3 - {url}", input=script).stdout.strip().split(" ", 2)
    return int(status), upstream, body


def monotonic(host: TestHost, unit: str, prop: str = "ExecMainStartTimestampMonotonic") -> int:
    """A unit's systemd timestamp in µs of CLOCK_MONOTONIC, which the test hosts share (one
    kernel), so timestamps of different hosts compare."""
    value = host.ssh(f"systemctl show -P {prop} {unit}").stdout.strip()
    return int(value)


def test_three_machines_one_homeserver(tmp_path: Path, bridged_testhosts: Factory) -> None:
    main, writers, senders = bridged_testhosts(3, names=["hs-main.test", "hs-w.test", "hs-s.test"])
    for host in (main, writers, senders):
        install_standin(host)
    shape = {
        main: machine(main, "main"),
        writers: machine(
            writers,
            "workers",
            stream_writer_events_stream=2,
            stream_writer_typing_stream=1,
            generic=2,
        ),
        senders: machine(senders, "workers", federation_sender=1, pusher=1, media_repository=1),
    }

    def deploy(*args: str) -> Any:
        inventory = write_inventory(tmp_path / "inventory.py", list(shape.items()))
        return pyinfra(tmp_path, inventory, *args)

    first = deploy("-y")
    assert first.returncode == 0, first.output[-5000:]

    # Each machine runs only its own processes; main's unit exists only on main.
    assert active(main) == {"matrix-synapse.service", "matrix-synapse.target"}
    on_writers = {
        "matrix-synapse-worker@generic-0.service",
        "matrix-synapse-worker@generic-1.service",
        "matrix-synapse-worker@stream-writer-0-events.service",
        "matrix-synapse-worker@stream-writer-1-events.service",
        "matrix-synapse-worker@stream-writer-2-typing.service",
    }
    on_senders = {
        "matrix-synapse-worker@federation-sender-0.service",
        "matrix-synapse-worker@pusher-0.service",
        "matrix-synapse-worker@media-repository-0.service",
    }
    assert active(writers) == on_writers | {"matrix-synapse.target"}, units(writers)
    assert active(senders) == on_senders | {"matrix-synapse.target"}, units(senders)
    for host in (writers, senders):
        # The workers' unit orders itself after main's, which systemd knows only by name here.
        load = host.ssh("systemctl show -P LoadState matrix-synapse.service").stdout.strip()
        assert load == "not-found"
        listing = host.ssh("ls /etc/systemd/system /etc/nginx/conf.d").stdout.split()
        assert "matrix-synapse.service" not in listing
        assert "matrix-synapse-workers.conf" not in listing
    # Every process of the cluster subscribed to main's Redis, at its private address.
    assert subscribers(main) == 1 + 5 + 3
    # Redis requires the password from another machine.
    assert "NOAUTH" in redis_numsub(writers, main, None)
    # The replication secret: the operator's, identical on every machine, 0600, never printed.
    secret = SECRETS["matrix_synapse_worker_replication_secret"].encode()
    sums = {
        h.ssh(
            "stat -c '%a %U' /etc/matrix-synapse/secrets/replication; "
            "sha256sum < /etc/matrix-synapse/secrets/replication"
        ).stdout
        for h in (main, writers, senders)
    }
    assert sums == {f"600 matrix-synapse\n{hashlib.sha256(secret).hexdigest()}  -\n"}
    for value in SECRETS.values():
        assert value not in first.output
    # Order: main was started (and ready: Type=notify) before any worker on another machine.
    main_ready = monotonic(main, "matrix-synapse.service", "ActiveEnterTimestampMonotonic")
    for host, names in ((writers, on_writers), (senders, on_senders)):
        for unit in names:
            assert monotonic(host, unit) > main_ready, unit
    # nginx on main routes to workers on the other machines, at their private addresses: the
    # generic workers run only on the writers' machine, the media worker on the senders'.
    routing = main.ssh("cat /etc/nginx/conf.d/matrix-synapse-workers.conf").stdout
    assert f"server {writers.address}:15000 " in routing
    assert f"server {senders.address}:" in routing
    status, upstream, body = http_get(main, "http://127.0.0.1:8088/_matrix/client/v3/sync")
    assert (status, upstream) == (200, "synapse_generic")
    assert body in ('{"standin": "generic-0"}', '{"standin": "generic-1"}'), body
    status, upstream, body = http_get(main, "http://127.0.0.1:8088/_matrix/media/v3/config")
    assert (status, body) == (200, '{"standin": "media-repository-0"}'), upstream

    # A rerun changes nothing anywhere, with a constant number of commands per host: the
    # machine-id, then per pass (prepare, execute) the running workers and the state fact, and
    # on main the Redis file's state too.
    again = deploy()
    for host, commands in ((main, 7), (writers, 5), (senders, 5)):
        assert_no_changes(again, host.name, commands=commands)

    # Move generic-1 from the writers' machine to the senders' machine.
    shape[writers]["matrix_synapse_workers_generic_workers_count"] = 1
    shape[senders]["matrix_synapse_workers_generic_workers_count"] = 1
    # A run limited to the new machine cannot stop it on the old one: refused, nothing started.
    limited = deploy("-y", "--limit", senders.name)
    assert limited.returncode != 0
    assert f"host {senders.name}: would start generic-1, not running here now" in limited.output
    assert f"leaves out hosts {main.name}, {writers.name}" in limited.output
    assert "matrix-synapse-worker@generic-1.service" in active(writers)
    assert "matrix-synapse-worker@generic-1.service" not in units(senders)
    moved = deploy("-y")
    assert moved.returncode == 0, moved.output[-5000:]
    unit = "matrix-synapse-worker@generic-1.service"
    assert unit in active(senders) and unit not in units(writers)
    assert writers.ssh("ls /etc/matrix-synapse/workers").stdout.split() == [
        "generic-0.yaml",
        "stream-writer-0-events.yaml",
        "stream-writer-1-events.yaml",
        "stream-writer-2-typing.yaml",
    ]
    # Never two at once: the old machine stopped it before the new one started it.
    stopped = writers.ssh(
        f"journalctl -o short-monotonic -u {unit} | grep -m1 'Stopped\\|Stopping'"
    ).stdout
    stopped_us = int(float(stopped.split("]")[0].strip("[ ")) * 1_000_000)
    assert stopped_us < monotonic(senders, unit)
    assert subscribers(main) == 1 + 4 + 4
    assert_no_changes(deploy(), main.name, commands=7)

    # Retire the senders' machine: everything of ours stopped and removed there.
    shape[senders]["matrix_synapse_role"] = "retired"
    retired = deploy("-y")
    assert retired.returncode == 0, retired.output[-5000:]
    assert active(senders) == set(), units(senders)
    # No unit file, drop-in, wants link or config of ours is left; the secrets stay (kept on
    # purpose: on a machine that was main the signing key is the homeserver's identity).
    leftovers = senders.ssh(
        "find /etc/systemd/system /etc/matrix-synapse /etc/nginx/conf.d "
        "\\( -type f -o -type l \\) -print | grep -v '^/etc/matrix-synapse/secrets/' "
        "| grep -v '^/etc/nginx/conf.d/default' | grep 'matrix-synapse' || true"
    ).stdout.split()
    assert leftovers == [], leftovers
    assert senders.ssh("ls /etc/matrix-synapse/secrets").stdout.split() == [
        "form",
        "macaroon",
        "registration",
        "signing.key",
    ]
    assert subscribers(main) == 1 + 4
    assert len(apply_commands(retired, senders.name)) == 1
    final = deploy()
    for host in (main, writers, senders):
        assert_no_changes(final, host.name, commands=None)


def test_the_main_hosts_postgresql_lets_the_cluster_in_with_scram_only(
    tmp_path: Path, bridged_testhosts: Factory
) -> None:
    tree = ensure_synapse_tree()  # PostgreSQL 15 installed and running
    main, workers = bridged_testhosts(2, names=["hs-main.test", "hs-w.test"], tree=tree)
    for host in (main, workers):
        install_standin(host)
    shape = {
        main: {**E2E_SETTINGS, **machine(main, "main")},
        workers: {**E2E_SETTINGS, **machine(workers, "workers", generic=1)},
    }
    inventory = write_inventory(tmp_path / "inventory.py", list(shape.items()))
    first = pyinfra(tmp_path, inventory, "-y")
    assert first.returncode == 0, first.output[-5000:]
    password = E2E_SETTINGS["matrix_synapse_database_password"]

    def query(sql: str, secret: str = password) -> Any:
        return workers.ssh(
            f"PGPASSWORD={secret} psql -h {main.address} -U synapse -d synapse -XAtc '{sql}'",
            check=False,
        )

    assert query("SELECT 1").stdout.strip() == "1"
    refused = query("SELECT 1", "wrong-password")
    assert refused.returncode != 0 and "password authentication failed" in refused.stderr
    # Only the role on its database, from the cluster's addresses, with scram-sha-256.
    rules = main.ssh(
        "runuser -u postgres -- psql -XAt -F ' ' -c \"SELECT type, database, user_name, address,"
        ' auth_method FROM pg_hba_file_rules ORDER BY line_number LIMIT 2"; '
        "runuser -u postgres -- psql -XAtc 'SHOW listen_addresses'"
    ).stdout.splitlines()
    assert rules == [
        f"host {{synapse}} {{synapse}} {main.address} scram-sha-256",
        f"host {{synapse}} {{synapse}} {workers.address} scram-sha-256",
        f"localhost,{main.address}",
    ]
    other_db = workers.ssh(
        f"PGPASSWORD={password} psql -h {main.address} -U synapse -d postgres -XAtc 'SELECT 1'",
        check=False,
    )
    assert other_db.returncode != 0 and "no pg_hba.conf entry" in other_db.stderr
    again = pyinfra(tmp_path, inventory)
    for host in (main, workers):
        assert_no_changes(again, host.name, commands=None)


def test_a_machine_unreachable_or_main_failing_leaves_the_others_unchanged(
    tmp_path: Path, bridged_testhosts: Factory
) -> None:
    main, workers = bridged_testhosts(2, names=["hs-main.test", "hs-w.test"])
    for host in (main, workers):
        install_standin(host)
    shape = {main: machine(main, "main"), workers: machine(workers, "workers", generic=2)}
    inventory = write_inventory(tmp_path / "inventory.py", list(shape.items()))
    # A third machine of the cluster that cannot be reached (nothing listens on its port).
    ghost = machine(workers, "workers", pusher=1)
    ghost.update(
        {
            **STANDIN_SETTINGS,
            "matrix_domain": "example.org",
            "ssh_hostname": "127.0.0.1",
            "ssh_port": 9,
            "ssh_connect_retries": 0,
            "matrix_synapse_private_address": "10.213.250.250",
        }
    )
    hosts = inventory.read_text().removeprefix("hosts = ").rstrip("\n")
    with_ghost = tmp_path / "with-ghost.py"
    with_ghost.write_text(f"hosts = {hosts[:-1]}, ('ghost', {ghost!r})]\n")
    run = pyinfra(tmp_path, with_ghost, "-y")
    assert run.returncode != 0
    assert "ghost: could not connect, so no host of the cluster example.org" in run.output, (
        run.output[-3000:]
    )
    for host in (main, workers):
        assert apply_commands(run, host.name) == []
        assert host.ssh("ls /etc/matrix-synapse", check=False).returncode != 0

    # The main host's apply fails (nginx refuses a foreign file): the workers host changes
    # nothing, and says why.
    main.ssh("echo 'this is not nginx' > /etc/nginx/conf.d/broken.conf")
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode != 0
    assert any("-m host.apply" in c for c in apply_commands(run, main.name))  # and failed
    assert apply_commands(run, workers.name) == []
    assert f"the cluster's main host {main.name} failed" in run.output, run.output[-3000:]
    assert workers.ssh("ls /etc/matrix-synapse", check=False).returncode != 0
    # Fixed, the next run converges both.
    main.ssh("rm /etc/nginx/conf.d/broken.conf")
    run = pyinfra(tmp_path, inventory, "-y")
    assert run.returncode == 0, run.output[-3000:]
    assert "matrix-synapse-worker@generic-1.service" in active(workers)

    # Round trips per host stay constant as the workers grow: 2 -> 60 on the workers host.
    small = pyinfra(tmp_path, inventory)
    for host, commands in ((main, 7), (workers, 5)):
        assert_no_changes(small, host.name, commands=commands)
    shape[workers]["matrix_synapse_workers_generic_workers_count"] = 60
    inventory = write_inventory(tmp_path / "inventory.py", list(shape.items()))
    grown = pyinfra(tmp_path, inventory)
    assert grown.returncode == 0, grown.output[-3000:]
    assert len(active(workers)) == 60 + 1
    # A change: main gets its new routes and shared config, the workers host its 58 new workers,
    # each in one apply command.
    assert grown.commands == {main.name: 8, workers.name: 6}, grown.command_lines
    large = pyinfra(tmp_path, inventory)
    for host, commands in ((main, 7), (workers, 5)):
        assert_no_changes(large, host.name, commands=commands)


def test_a_host_that_no_longer_runs_main_lets_go_of_nginx(
    tmp_path: Path, bridged_testhosts: Factory
) -> None:
    first, second = bridged_testhosts(2, names=["hs-first.test", "hs-second.test"])
    for host in (first, second):
        install_standin(host)

    def deploy(shape: dict[TestHost, dict[str, Any]], *args: str) -> Any:
        inventory = write_inventory(tmp_path / "inventory.py", list(shape.items()))
        return pyinfra(tmp_path, inventory, *args)

    def listening(host: TestHost, port: int) -> bool:
        return bool(host.ssh(f"ss -ltnH 'sport = :{port}'").stdout.strip())

    before = {first: machine(first, "main"), second: machine(second, "workers", generic=2)}
    assert (run := deploy(before, "-y")).returncode == 0, run.output[-5000:]
    routing = first.ssh("cat /etc/nginx/conf.d/matrix-synapse-workers.conf").stdout
    port = int(routing.split("listen ", 1)[1].split(";")[0].rsplit(":", 1)[1].split()[0])
    master = first.ssh("systemctl show -P MainPID nginx.service").stdout.strip()
    assert listening(first, port)

    # The main role moves to the second machine (the generic workers with it).
    after = {first: machine(first, "workers"), second: machine(second, "main", generic=2)}
    assert (run := deploy(after, "-y")).returncode == 0, run.output[-5000:]
    assert second.ssh("test -f /etc/nginx/conf.d/matrix-synapse-workers.conf").returncode == 0
    status, upstream, _ = http_get(second, f"http://127.0.0.1:{port}/_matrix/client/v3/sync")
    assert (status, upstream) == (200, "synapse_generic")
    # The former main removed its routing file and nginx let it go: reloaded (same master),
    # no longer serving the homeserver, and not started anew.
    assert first.ssh(
        "test -e /etc/nginx/conf.d/matrix-synapse-workers.conf", check=False
    ).returncode
    assert first.ssh("systemctl show -P MainPID nginx.service").stdout.strip() == master
    assert not listening(first, port)
    assert "matrix-synapse.service" not in active(first)
    again = deploy(after)
    for host in (first, second):
        assert_no_changes(again, host.name, commands=None)
