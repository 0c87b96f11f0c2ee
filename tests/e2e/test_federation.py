"""Two real homeservers federate over TLS from the deploy's ACME path (issue 12, deliverable 3).

hs-a.test and hs-b.test are bridged test hosts (the bridge's name server resolves them) running
real Synapse with a federation sender and a federation reader each; pebble on a third host
(acme.test) issues both certificates through the deploy's ``matrix_synapse_tls_mode = "acme"``
(certbot --webroot via the deploy's nginx). Each Synapse trusts pebble's root for federation as
an operator would configure it (``federation_custom_ca_list`` and the bridge's subnet in
``ip_range_whitelist``, through ``matrix_synapse_configuration_extension``); certificate
verification stays on. The two are found the two ways Synapse knows:

- hs-a.test directly: no ``/.well-known/matrix/server`` (hs-a.test is the served name), no
  ``_matrix-fed._tcp`` SRV record (the name server answers NXDOMAIN at once), so port 8448 of
  hs-a.test, which the deploy's nginx serves;
- hs-b.test by delegation: its host also answers to matrix.hs-b.test, the served name (first in
  ``matrix_synapse_tls_server_names``; the certificate carries both), so the deploy serves
  ``/.well-known/matrix/server`` = ``matrix.hs-b.test:443`` at https://hs-b.test/, and 8448 is
  off there (``matrix_synapse_tls_federation_port = None``).

Clients talk to each homeserver's own nginx (inside its guest). Invite, join, messages, typing and
read receipts go both ways; the receiving nginx logs every inbound ``/_matrix/federation/``
request as served by the federation reader, and the outbound transactions (events, typing and
receipt EDUs) are counted on the federation sender's metrics listener, none on main's. (The
request/response calls a client request makes, such as the invite, make_join/send_join and
profile queries, are sent by the process serving that request, here main: Synapse's design.)
A name B's certificate does not carry is refused (verification on), and a rerun changes nothing.

Run: .venv/bin/pytest tests/e2e/test_federation.py -v
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploys.core.plan import build_plan
from deploys.core.settings import parse_settings
from tests.support.deploying import assert_no_changes, pyinfra, write_inventory
from tests.support.federation_tree import ensure_synapse_acme_tree
from tests.support.matrix_client import guest_request
from tests.support.pebble import ensure_acme_tree, start_pebble, trust_pebble
from tests.support.settings_data import make_data
from tests.support.synapse_tree import E2E_SETTINGS
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

Factory = Callable[..., list[TestHost]]
NGINX = "http://127.0.0.1:8088"
ACCESS_LOG = "/var/log/nginx/matrix-synapse-workers.access.log"
# pebble's root (what the certificates it issues chain to), as the operator puts it on each host.
FEDERATION_CA = "/etc/ssl/pebble-issuer-root.pem"


class User:
    """A Matrix user of the homeserver on `host`, talking to that host's nginx."""

    def __init__(self, host: TestHost, domain: str, name: str) -> None:
        self.host, self.user_id = host, f"@{name}:{domain}"
        host.ssh(
            f"/opt/venvs/matrix-synapse/bin/register_new_matrix_user -c "
            f"/etc/matrix-synapse/homeserver.yaml -u {name} -p pass-{name} --no-admin "
            "http://127.0.0.1:8008"
        )
        self.token: str | None = None
        self.seen: list[dict[str, Any]] = []  # /sync answers
        login = self.call(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": f"pass-{name}",
            },
        )
        self.token = login["access_token"]

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return guest_request(self.host, method, NGINX + path, body, self.token)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.request(method, path, body)
        assert answer["status"] == 200, (method, path, answer)
        return answer["body"]

    def send(self, room_id: str, text: str) -> str:
        path = f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{uuid.uuid4().hex}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": text})["event_id"]

    def wait_sync(self, what: str, found: Callable[[dict[str, Any]], bool], seconds: float = 90):
        """Incremental /sync (long polls, as clients do; a repeated full sync would get Synapse's
        cached answer) until `found` holds for one answer seen so far; fails naming `what`."""
        deadline = time.monotonic() + seconds
        while not any(found(sync) for sync in self.seen):
            assert time.monotonic() < deadline, (
                f"{self.user_id}: no {what}: {str(self.seen[-1:])[:3000]}"
            )
            since = f"&since={self.seen[-1]['next_batch']}" if self.seen else ""
            self.seen.append(self.call("GET", f"/_matrix/client/v3/sync?timeout=5000{since}"))


def joined_room(sync: dict[str, Any], room_id: str) -> dict[str, Any]:
    return sync["rooms"].get("join", {}).get(room_id, {})


def has_message(room_id: str, text: str) -> Callable[[dict[str, Any]], bool]:
    def found(sync: dict[str, Any]) -> bool:
        events = joined_room(sync, room_id).get("timeline", {}).get("events", [])
        return any(e.get("content", {}).get("body") == text for e in events)

    return found


def is_typing(room_id: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
    def found(sync: dict[str, Any]) -> bool:
        events = joined_room(sync, room_id).get("ephemeral", {}).get("events", [])
        return any(e["type"] == "m.typing" and user_id in e["content"]["user_ids"] for e in events)

    return found


def has_read(room_id: str, event_id: str, user_id: str) -> Callable[[dict[str, Any]], bool]:
    def found(sync: dict[str, Any]) -> bool:
        events = joined_room(sync, room_id).get("ephemeral", {}).get("events", [])
        return any(
            e["type"] == "m.receipt" and user_id in e["content"].get(event_id, {}).get("m.read", {})
            for e in events
        )

    return found


def homeserver_data(
    domain: str, host: TestHost, pebble_url: str, ca_bundle: str, **extra: Any
) -> dict[str, Any]:
    assert host.network is not None
    return {
        **E2E_SETTINGS,
        "matrix_domain": domain,
        "matrix_synapse_trusted_key_servers": [],  # each fetches the other's keys itself
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "little-federation-helper",  # one federation sender
        "matrix_synapse_workers_federation_reader_workers_count": 1,
        "matrix_synapse_tls_mode": "acme",
        "matrix_synapse_tls_acme_directory_url": pebble_url,
        "matrix_synapse_tls_acme_ca_bundle": ca_bundle,
        "matrix_synapse_tls_acme_email": f"admin@{domain}",
        "matrix_synapse_configuration_extension": {
            "federation_verify_certificates": True,
            "federation_custom_ca_list": [FEDERATION_CA],
            # Synapse refuses private addresses by default; the bridge is one.
            "ip_range_whitelist": [host.network.subnet],
        },
        **extra,
    }


def listeners(data: dict[str, Any], host: TestHost) -> dict[tuple[str, str], str]:
    """(process, purpose) -> host:port, from the deploy's own plan of these settings."""
    plan = build_plan(parse_settings(make_data(**data)), host.name)
    return {
        (p.name, listener.purpose): f"{listener.bind_addresses[0]}:{listener.port}"
        for p in plan.processes
        for listener in p.listeners
    }


def metric_total(host: TestHost, target: str, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` (with `labels` in the label set) at `target`."""
    text = host.ssh(f"curl -sf http://{target}/_synapse/metrics").stdout
    pattern = re.compile(rf"^{name}\{{([^}}]*)\}} (\S+)$", re.M)
    return sum(float(v) for ls, v in pattern.findall(text) if labels in ls)


def federation_log(receiver: TestHost, sender: TestHost) -> list[str]:
    lines = receiver.ssh(f"cat {ACCESS_LOG}").stdout.splitlines()
    return [
        line
        for line in lines
        if line.startswith(f"{sender.address} ") and " /_matrix/federation/" in line
    ]


def test_two_homeservers_federate_through_their_workers(
    tmp_path: Path, bridged_testhosts: Factory
) -> None:
    started = time.monotonic()
    acme, a, b = bridged_testhosts(
        3,
        names=["acme.test", "hs-a.test", ["hs-b.test", "matrix.hs-b.test"]],
        tree=[ensure_acme_tree(), ensure_synapse_acme_tree(), ensure_synapse_acme_tree()],
    )
    pebble = start_pebble(acme)
    root = pebble.issuer_roots()
    delegated = {
        "matrix_synapse_tls_server_names": ["matrix.hs-b.test", "hs-b.test"],
        "matrix_synapse_tls_federation_port": None,
    }
    data = {}
    for domain, host, extra in (("hs-a.test", a, {}), ("hs-b.test", b, delegated)):
        host.ssh(f"install -m 0644 /dev/stdin {FEDERATION_CA}", input=root)
        data[host.name] = homeserver_data(
            domain, host, pebble.directory_url, trust_pebble(host, pebble), **extra
        )
    inventory = write_inventory(
        tmp_path / "inventory.py", [(a, data[a.name]), (b, data[b.name])], standin=False
    )
    run = pyinfra(tmp_path, inventory, "-y", timeout=900)
    assert run.returncode == 0, run.output[-6000:]
    deployed = time.monotonic()
    for names, host in ((["hs-a.test"], a), (["matrix.hs-b.test", "hs-b.test"], b)):
        issuer = host.ssh(
            "openssl x509 -in /etc/nginx/matrix-synapse-tls/fullchain.pem -noout -issuer -ext "
            "subjectAltName"
        ).stdout
        assert "Pebble Intermediate CA" in issuer, issuer
        assert all(f"DNS:{name}" in issuer for name in names), issuer
    assert a.ssh("ss -Htln 'sport = 8448'").stdout.strip(), "A: nothing listens on 8448"
    assert b.ssh("ss -Htln 'sport = 8448'").stdout.strip() == "", "B: 8448 should be off"
    # B's delegation, as A's Synapse reads it (over TLS, trusting pebble's root only).
    well_known = a.ssh(
        f"curl -sf --cacert {FEDERATION_CA} https://hs-b.test/.well-known/matrix/server"
    ).stdout
    assert json.loads(well_known) == {"m.server": "matrix.hs-b.test:443"}, well_known
    assert (
        a.ssh(
            "curl -s -o /dev/null -w '%{http_code}' --cacert "
            f"{FEDERATION_CA} https://hs-a.test/.well-known/matrix/server"
        ).stdout
        == "404"
    )

    alice, bob = User(a, "hs-a.test", "alice"), User(b, "hs-b.test", "bob")
    room_id = alice.call("POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat"})[
        "room_id"
    ]
    alice.call("POST", f"/_matrix/client/v3/rooms/{room_id}/invite", {"user_id": bob.user_id})
    bob.wait_sync("invite", lambda s: room_id in s["rooms"].get("invite", {}))
    bob.call("POST", f"/_matrix/client/v3/join/{room_id}?server_name=hs-a.test", {})
    alice.wait_sync(
        "bob's join",
        lambda s: any(
            e.get("state_key") == bob.user_id and e["content"].get("membership") == "join"
            for e in joined_room(s, room_id).get("timeline", {}).get("events", [])
        ),
    )

    # Messages both ways.
    from_a = alice.send(room_id, "hello from A")
    bob.wait_sync("A's message", has_message(room_id, "hello from A"))
    from_b = bob.send(room_id, "hello from B")
    alice.wait_sync("B's message", has_message(room_id, "hello from B"))
    # Typing both ways.
    typing = {"typing": True, "timeout": 60000}
    bob.call("PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/{bob.user_id}", typing)
    alice.wait_sync("B typing", is_typing(room_id, bob.user_id))
    alice.call("PUT", f"/_matrix/client/v3/rooms/{room_id}/typing/{alice.user_id}", typing)
    bob.wait_sync("A typing", is_typing(room_id, alice.user_id))
    # Read receipts both ways.
    bob.call("POST", f"/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{from_a}", {})
    alice.wait_sync("B's read receipt", has_read(room_id, from_a, bob.user_id))
    alice.call("POST", f"/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{from_b}", {})
    bob.wait_sync("A's read receipt", has_read(room_id, from_b, alice.user_id))
    federated = time.monotonic()

    for receiver, sender in ((a, b), (b, a)):
        # Inbound: every federation request from the other homeserver was answered (200: not
        # port 80's redirect; only the TLS servers listen beyond loopback) by the federation
        # reader (the upstream and its address in nginx's log).
        reader = listeners(data[receiver.name], receiver)[("federation-reader-0", "http")]
        log = federation_log(receiver, sender)
        assert any("/_matrix/federation/v1/send/" in line for line in log), log
        for line in log:
            assert '" 200 ' in line, line
            assert f" upstream=synapse_federation_reader addr={reader} " in line, line
        # Outbound: transactions (with the typing and receipt EDUs) left through the federation
        # sender, none through main.
        ports = listeners(data[sender.name], sender)
        federation_sender = ports[("federation-sender-0", "metrics")]
        main = ports[("main", "metrics")]
        sent = "synapse_federation_client_sent_transactions_total"
        assert metric_total(sender, federation_sender, sent) > 0
        assert metric_total(sender, main, sent) == 0
        edus = "synapse_federation_client_sent_edus_by_type_total"
        for edu in ("m.typing", "m.receipt"):
            assert metric_total(sender, federation_sender, edus, f'type="{edu}"') > 0, edu
            assert metric_total(sender, main, edus, f'type="{edu}"') == 0, edu

    # Verification is on: A's machine name resolves to A too, but A's certificate does not name
    # it, so B refuses the connection (service_identity's DNSMismatch) and the invite never
    # reaches A's nginx.
    before = len(federation_log(a, b))
    refused = bob.request(
        "POST", f"/_matrix/client/v3/rooms/{room_id}/invite", {"user_id": f"@carol:{a.name}"}
    )
    assert refused["status"] == 502, refused
    assert len(federation_log(a, b)) == before
    journal = b.ssh("journalctl -u matrix-synapse --no-pager -o cat").stdout
    invites = [line for line in journal.splitlines() if f"[{a.name}] Request failed: PUT" in line]
    assert invites and all("VerificationError" in line for line in invites), invites

    # A rerun of both hosts changes nothing (certbot's certificates are kept).
    rerun = pyinfra(tmp_path, inventory, timeout=900)
    for host in (a, b):
        assert_no_changes(rerun, host.name, commands=None)
    print(
        f"\nfederation e2e: deploy {deployed - started:.1f} s, "
        f"federation {federated - deployed:.1f} s, total {time.monotonic() - started:.1f} s"
    )
