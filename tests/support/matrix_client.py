"""A Matrix client that runs inside a test host: each request goes through the guest's nginx from
the guest itself (python3, standard library), so the test needs no route into the guest."""

from __future__ import annotations

import json
import shlex
import uuid
from typing import Any

from tests.support.testhost import TestHost

NGINX = "http://127.0.0.1:8088"
# Runs inside the guest: one HTTP request from a JSON spec on stdin, the answer as JSON.
CLIENT = r"""
import json, sys, urllib.request, urllib.error
spec = json.load(sys.stdin)
data = None if spec.get("body") is None else json.dumps(spec["body"]).encode()
request = urllib.request.Request(spec["url"], data=data, method=spec["method"])
request.add_header("Content-Type", "application/json")
if spec.get("token"):
    request.add_header("Authorization", "Bearer " + spec["token"])
try:
    with urllib.request.urlopen(request, timeout=60) as response:
        status, headers, body = response.status, dict(response.headers), response.read()
except urllib.error.HTTPError as error:
    status, headers, body = error.code, dict(error.headers), error.read()
try:
    parsed = json.loads(body or b"null")
except ValueError:
    parsed = body.decode(errors="replace")
print(json.dumps({"status": status, "headers": headers, "body": parsed}))
"""


class Client:
    """Requests through the guest's nginx on loopback, with the logged-in user's token."""

    def __init__(self, host: TestHost) -> None:
        self.host = host
        self.token: str | None = None

    def __call__(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return guest_request(self.host, method, NGINX + path, body, self.token)


def guest_request(
    host: TestHost, method: str, url: str, body: Any = None, token: str | None = None
) -> dict[str, Any]:
    """One request from inside ``host``: status, headers, body (JSON when it parses) and the
    ``X-Synapse-Upstream`` that served it."""
    spec = {"method": method, "url": url, "body": body, "token": token}
    answer = json.loads(
        host.ssh(f"python3 -c {shlex.quote(CLIENT)}", input=json.dumps(spec)).stdout
    )
    answer["upstream"] = answer["headers"].get("X-Synapse-Upstream")
    return answer


def assert_writes_reach_their_workers(client: Client, room_id: str, user_id: str) -> None:
    """Typing, to-device and push-rule writes each answered by their stream writer, and media
    by the media worker, through nginx, for the logged-in ``user_id`` in ``room_id``."""
    typing = client(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/typing/{user_id}",
        {"typing": True, "timeout": 3000},
    )
    assert (typing["status"], typing["upstream"]) == (200, "synapse_stream_typing"), typing
    to_device = client(
        "PUT", f"/_matrix/client/v3/sendToDevice/m.test/{uuid.uuid4().hex}", {"messages": {}}
    )
    assert (to_device["status"], to_device["upstream"]) == (200, "synapse_stream_to_device")
    rule = client(
        "PUT",
        "/_matrix/client/v3/pushrules/global/override/my.rule",
        {"actions": ["dont_notify"], "conditions": []},
    )
    assert (rule["status"], rule["upstream"]) == (200, "synapse_stream_push_rules"), rule
    media = client("GET", "/_matrix/client/v1/media/config")
    assert (media["status"], media["upstream"]) == (200, "synapse_media"), media
