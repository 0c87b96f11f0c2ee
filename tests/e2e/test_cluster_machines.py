"""A real Synapse homeserver on three machines (issue 13): three test hosts on a private bridge,
booted from the Synapse tree. Main, PostgreSQL, Redis and nginx on the first; the event, typing,
to-device and push-rule stream writers and two generic workers on the second; a federation
sender, a pusher and a media worker on the third. A real client through nginx on main.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_synapse_cluster import register
from tests.support.deploying import assert_no_changes, pyinfra, write_inventory
from tests.support.matrix_client import Client, assert_writes_reach_their_workers
from tests.support.settings_data import CLUSTER_SECRETS as SECRETS
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration


def machine(host: TestHost, role: str, **counts: int) -> dict[str, Any]:
    data = {
        **E2E_SETTINGS,
        **SECRETS,
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "little-federation-helper",
        "matrix_synapse_workers_federation_sender_workers_count": 0,
        "matrix_synapse_role": role,
        "matrix_synapse_private_address": host.address,
    }
    for key, count in counts.items():
        data[f"matrix_synapse_workers_{key}_workers_count"] = count
    return data


def replication_post(client: TestHost, url: str, secret: str | None) -> int:
    header = f", headers={{'Authorization': 'Bearer {secret}'}}" if secret else ""
    script = (
        "import urllib.request as u, urllib.error as e\n"
        f"r = u.Request({url!r}, data=b'{{}}', method='POST'{header})\n"
        "try:\n    print(u.urlopen(r, timeout=30).status)\n"
        "except e.HTTPError as error:\n    print(error.code)\n"
    )
    return int(client.ssh("python3 -", input=script).stdout.strip())


def test_a_real_homeserver_on_three_machines(tmp_path: Path, bridged_testhosts: Any) -> None:
    tree = ensure_synapse_tree()
    main, writers, senders = bridged_testhosts(
        3, names=["hs-main.test", "hs-w.test", "hs-s.test"], tree=tree
    )
    shape = [
        (main, machine(main, "main")),
        (
            writers,
            machine(
                writers,
                "workers",
                stream_writer_events_stream=2,
                stream_writer_typing_stream=1,
                stream_writer_to_device_stream=1,
                stream_writer_push_rules_stream=1,
                generic=2,
            ),
        ),
        (senders, machine(senders, "workers", federation_sender=1, pusher=1, media_repository=1)),
    ]
    inventory = write_inventory(tmp_path / "inventory.py", shape, standin=False)
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    subscribers = main.ssh(
        f"redis-cli -a {SECRETS['matrix_synapse_redis_password']} --no-auth-warning "
        "PUBSUB NUMSUB example.org"
    ).stdout.split()
    assert subscribers[-1] == str(1 + 7 + 3)

    client = Client(main)
    register(main, client, "alice")  # login through nginx: a generic worker on the second host
    room = client("POST", "/_matrix/client/v3/createRoom", {})
    assert (room["status"], room["upstream"]) == (200, "synapse_generic"), room
    room_id = room["body"]["room_id"]
    sent = client(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
        {"msgtype": "m.text", "body": "hello from three machines"},
    )
    assert sent["status"] == 200, sent
    messages = client("GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5")
    assert any(
        e.get("content", {}).get("body") == "hello from three machines"
        for e in messages["body"]["chunk"]
    ), messages
    sync = client("GET", "/_matrix/client/v3/sync?timeout=0")
    assert sync["status"] == 200 and room_id in sync["body"]["rooms"]["join"]
    assert_writes_reach_their_workers(client, room_id, "@alice:example.org")

    # The replication listener on another machine refuses a request without the secret.
    shared = yaml.safe_load(writers.ssh("cat /etc/matrix-synapse/conf.d/workers.yaml").stdout)
    where = shared["instance_map"]["stream-writer-0-events"]
    assert where["host"] == writers.address
    url = f"http://{where['host']}:{where['port']}/_synapse/replication/send_events/{uuid.uuid4().hex}"
    unit = "matrix-synapse-worker@stream-writer-0-events.service"
    assert replication_post(main, url, None) == 500
    assert replication_post(main, url, "not-the-secret-0123456789-0123456789") == 500
    journal = writers.ssh(f"journalctl -u {unit} --no-pager").stdout
    assert "Missing Authorization header" in journal
    assert "Invalid Authorization header" in journal

    # A Prometheus on the main host reaches every process of the cluster its file_sd names.
    scrape = (
        "import json, urllib.request as u\n"
        "groups = json.load(open('/etc/prometheus/file_sd/synapse.json'))\n"
        "for g in groups:\n"
        "    body = u.urlopen(f'http://{g[\"targets\"][0]}/_synapse/metrics', timeout=10).read()\n"
        "    print(g['labels']['worker'], g['targets'][0], b'synapse_build_info' in body)\n"
    )
    scraped = [line.split() for line in main.ssh("python3 -", input=scrape).stdout.splitlines()]
    assert len(scraped) == 1 + 7 + 3 and all(ok == "True" for _, _, ok in scraped), scraped
    assert {address.rsplit(":", 1)[0] for _, address, _ in scraped} == {
        "127.0.0.1",
        writers.address,
        senders.address,
    }, scraped

    assert_no_changes(pyinfra(tmp_path, inventory, timeout=900), main.name, commands=None)

    def units(host: TestHost) -> set[str]:
        out = host.ssh("systemctl list-units --state=active --plain --no-legend 'matrix-*'")
        return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}

    # Move generic-1 to the third machine; then retire the third machine.
    shape[1][1]["matrix_synapse_workers_generic_workers_count"] = 1
    shape[2][1]["matrix_synapse_workers_generic_workers_count"] = 1
    inventory = write_inventory(tmp_path / "inventory.py", shape, standin=False)
    moved = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert moved.returncode == 0, moved.output[-6000:]
    generic_1 = "matrix-synapse-worker@generic-1.service"
    assert generic_1 in units(senders) and generic_1 not in units(writers)
    for _ in range(4):  # both generic workers serve (nginx balances between them)
        assert client("GET", "/_matrix/client/v3/sync?timeout=0")["status"] == 200
    shape[2][1]["matrix_synapse_role"] = "retired"
    inventory = write_inventory(tmp_path / "inventory.py", shape, standin=False)
    retired = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert retired.returncode == 0, retired.output[-6000:]
    assert units(senders) == set()
    subscribers = main.ssh(
        f"redis-cli -a {SECRETS['matrix_synapse_redis_password']} --no-auth-warning "
        "PUBSUB NUMSUB example.org"
    ).stdout.split()
    assert subscribers[-1] == str(1 + 6)
    # Without the third machine's workers, main serves media again and the room still works.
    media = client("GET", "/_matrix/client/v1/media/config")
    assert (media["status"], media["upstream"]) == (200, "synapse_main"), media
    sent = client(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}",
        {"msgtype": "m.text", "body": "after the retirement"},
    )
    assert sent["status"] == 200, sent
    final = pyinfra(tmp_path, inventory, timeout=900)
    for host in (main, writers, senders):
        assert_no_changes(final, host.name, commands=None)
