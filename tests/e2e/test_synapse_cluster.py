"""A real Synapse cluster on a systemd test host: PostgreSQL, Redis, nginx routing, workers.

The host boots from a cached tree in which the deploy's own install script already ran
(tests/support/synapse_tree.py), so the deploy's install step is a no-op here and the run costs
what configuring and starting Synapse costs.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import assert_no_changes, main_pids, pyinfra, write_inventory
from tests.support.matrix_client import Client, assert_writes_reach_their_workers
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost
from tests.support.verifying import assert_verify_passes_with_live_checks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def synapse_tree() -> Path:
    return ensure_synapse_tree()


def boot_and_deploy(
    tmp_path: Path, testhost_factory: Any, tree: Path, settings: dict[str, Any]
) -> tuple[TestHost, Path]:
    (host,) = testhost_factory(1, tree=tree)
    inventory = write_inventory(tmp_path / "inventory.py", [(host, settings)], standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    return host, inventory


def register(host: TestHost, client: Client, user: str) -> None:
    host.ssh(
        f"/opt/venvs/matrix-synapse/bin/register_new_matrix_user -c "
        f"/etc/matrix-synapse/homeserver.yaml -u {user} -p pass-{user} --no-admin "
        "http://127.0.0.1:8008"
    )
    login = client(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": f"pass-{user}",
        },
    )
    assert login["status"] == 200, login
    client.token = login["body"]["access_token"]


def one_of_each(**extra: Any) -> dict[str, Any]:
    return {
        **E2E_SETTINGS,
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "one-of-each",
        **extra,
    }


def test_one_of_each_cluster_serves_and_routes(
    tmp_path: Path, testhost_factory: Any, synapse_tree: Path
) -> None:
    host, inventory = boot_and_deploy(tmp_path, testhost_factory, synapse_tree, one_of_each())
    units = host.ssh("systemctl list-units --no-legend --plain 'matrix-synapse*'").stdout
    assert sum(" active " in line for line in units.splitlines()) == 16 + 2, units
    subscribers = host.ssh("redis-cli PUBSUB NUMSUB example.org").stdout.split()
    assert subscribers[-1] == "17"
    assert_verify_passes_with_live_checks(host, inventory)

    client = Client(host)
    register(host, client, "alice")
    room = client("POST", "/_matrix/client/v3/createRoom", {})
    assert room["status"] == 200, room
    assert room["upstream"] == "synapse_generic"
    room_id = room["body"]["room_id"]
    txn = uuid.uuid4().hex
    sent = client(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": "hello"},
    )
    assert sent["status"] == 200, sent
    messages = client("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5")
    assert messages["status"] == 200
    assert any(e.get("content", {}).get("body") == "hello" for e in messages["body"]["chunk"])
    sync = client("GET", "/_matrix/client/v3/sync?timeout=0")
    assert sync["status"] == 200 and room_id in sync["body"]["rooms"]["join"]

    assert_writes_reach_their_workers(client, room_id, "@alice:example.org")
    logout_like = client("GET", "/_matrix/client/v3/pushers")
    assert logout_like["upstream"] == "synapse_main"

    # One more generic worker: only it starts; nothing else restarts (nginx reloads).
    before = main_pids(host)
    inventory.write_text(
        inventory.read_text().replace(
            "'matrix_synapse_workers_preset': 'one-of-each'",
            "'matrix_synapse_workers_preset': 'one-of-each', "
            "'matrix_synapse_workers_generic_workers_count': 2",
        )
    )
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-4000:]
    after = main_pids(host)
    assert after["matrix-synapse-worker@generic-1.service"] > 0
    restarted = {u for u in before if before[u] != after.get(u)}
    assert restarted == set(), restarted
    assert host.ssh("redis-cli PUBSUB NUMSUB example.org").stdout.split()[-1] == "18"
    assert_no_changes(pyinfra(tmp_path, inventory), host.name, commands=None)
    assert_verify_passes_with_live_checks(host, inventory)  # 18 workers now


def test_specialized_workers_route_by_class(
    tmp_path: Path, testhost_factory: Any, synapse_tree: Path
) -> None:
    settings = {**one_of_each(), "matrix_synapse_workers_preset": "specialized-workers"}
    host, _ = boot_and_deploy(tmp_path, testhost_factory, synapse_tree, settings)
    client = Client(host)
    register(host, client, "bob")
    room = client("POST", "/_matrix/client/v3/createRoom", {})
    assert room["status"] == 200, room
    room_id = room["body"]["room_id"]
    sync = client("GET", "/_matrix/client/v3/sync?timeout=0")
    assert (sync["status"], sync["upstream"]) == (200, "synapse_sync"), sync
    messages = client("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b")
    assert (messages["status"], messages["upstream"]) == (200, "synapse_room"), messages
    versions = client("GET", "/_matrix/client/versions")
    assert versions["status"] == 200 and versions["upstream"] == "synapse_client_reader", versions
    federation = client("GET", "/_matrix/federation/v1/version")
    assert federation["upstream"] == "synapse_federation_reader", federation
