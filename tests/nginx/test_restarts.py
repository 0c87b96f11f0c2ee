"""Restarting workers behind a real nginx: retries on another server, main as a fallback, 503.

The same rendered file, nginx and stubs as tests/nginx/test_nginx_real.py; a process that is
restarting is a stub left out (its port refuses connections) or a "dying" stub (it reads the
request and closes the connection without answering, as a stopped process does mid-request).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from deploys.core.routing import FAIL_TIMEOUT_SECONDS, UNAVAILABLE
from tests.nginx.test_nginx_real import Answer, Nginx, running_nginx, sync_token

SYNC = "/_matrix/client/v3/sync?timeout=0"
KEYS_QUERY = "/_matrix/client/v3/keys/query"  # a POST the generic workers serve
# nginx tries a failed server again once fail_timeout has passed, in whole seconds
BACK_AFTER = FAIL_TIMEOUT_SECONDS + 1.2
TWO_GENERIC = {"matrix_synapse_workers_generic_workers_count": 2}


def as_user(nginx: Nginx, method: str, target: str, user: str) -> Answer:
    return nginx.request(method, target, {"Authorization": f"Bearer {sync_token(user, 0)}"})


def address_of(nginx: Nginx, process: str) -> str:
    http = nginx.plan.worker(process).listener("http")
    assert http is not None
    return f"{nginx.address}:{http.port}"


def assert_unavailable(answer: Answer, head: bool = False) -> None:
    """A Matrix 503 with Retry-After, not nginx's bare 502 page (a HEAD answer has no body)."""
    assert answer.status == 503, answer
    assert answer.headers["retry-after"] == str(UNAVAILABLE.retry_after)
    assert answer.headers["content-type"] == "application/json"
    if head:
        assert answer.body == ""
    else:
        assert json.loads(answer.body)["errcode"] == "M_UNKNOWN"


def test_a_request_to_a_server_that_refuses_is_answered_by_another_of_its_class(
    tmp_path: Path,
) -> None:
    with running_nginx(tmp_path, "generic-only", absent={"generic-1"}, **TWO_GENERIC) as nginx:
        users = [f"user{i}" for i in range(30)]  # about half of them hash to generic-1
        gets = {(a.status, a.process) for a in (as_user(nginx, "GET", SYNC, u) for u in users)}
        assert gets == {(200, "generic-0")}
        time.sleep(BACK_AFTER)  # generic-1 is tried again: a POST was not sent
        posts = {
            (a.status, a.process) for a in (as_user(nginx, "POST", KEYS_QUERY, u) for u in users)
        }
        assert posts == {(200, "generic-0")}
        refused, served = address_of(nginx, "generic-1"), address_of(nginx, "generic-0")
        retried = [x for x in nginx.access_log.read_text().splitlines() if refused in x]
        assert retried, "no request was hashed to the refusing server"
        for line in retried:  # each tried generic-1 once, then generic-0 answered
            assert f"addr={refused}, {served} upstream_status=502, 200 " in line, line


def test_a_server_that_stops_mid_request_costs_a_get_a_retry_and_a_post_a_503(
    tmp_path: Path,
) -> None:
    with running_nginx(tmp_path, "generic-only", **TWO_GENERIC) as nginx:
        users = [f"user{i}" for i in range(30)]
        on_1 = [u for u in users if as_user(nginx, "GET", SYNC, u).process == "generic-1"]
        assert on_1
        user, stubs = on_1[0], nginx.stubs
        stubs.dying.add("generic-1")
        before = stubs.requests["generic-1"], stubs.requests["generic-0"]
        assert_unavailable(as_user(nginx, "POST", KEYS_QUERY, user))  # reached Synapse: not resent
        assert (stubs.requests["generic-1"], stubs.requests["generic-0"]) == (
            before[0] + 1,
            before[1],
        )
        time.sleep(BACK_AFTER)
        answer = as_user(nginx, "GET", SYNC, user)  # tries generic-1 again, then generic-0
        assert (answer.status, answer.process) == (200, "generic-0")
        assert stubs.requests["generic-1"] == before[0] + 2
        stubs.dying.clear()  # the restarted worker is back in rotation after fail_timeout
        time.sleep(BACK_AFTER)
        assert as_user(nginx, "GET", SYNC, user).process == "generic-1"


def test_synapse_answering_502_itself_is_passed_through_not_retried(tmp_path: Path) -> None:
    """Synapse says 502 when a remote homeserver fails: no retry, no 503, no server marked down."""
    with running_nginx(tmp_path, "generic-only", **TWO_GENERIC) as nginx:
        before = sum(nginx.stubs.requests.values())
        answer = as_user(nginx, "GET", f"{SYNC}&status=502", "alice")
        assert (answer.status, answer.process) == (
            502,
            as_user(nginx, "GET", SYNC, "alice").process,
        )
        assert sum(nginx.stubs.requests.values()) == before + 2


# (process left out, method, path): a sample of the class each serves in specialized-workers
FALLBACK_CASES = [
    ("sync-0", "GET", SYNC, "synapse_sync"),
    ("room-0", "PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t1", "synapse_room"),
    ("client-reader-0", "GET", "/_matrix/client/v3/joined_rooms", "synapse_client_reader"),
    ("federation-reader-0", "GET", "/_matrix/federation/v1/version", "synapse_federation_reader"),
    ("user-dir-0", "POST", "/_matrix/client/v3/user_directory/search", "synapse_user_directory"),
]


def test_a_single_server_class_falls_back_to_main_while_its_worker_is_down(
    tmp_path: Path,
) -> None:
    absent = {process for process, *_ in FALLBACK_CASES}
    with running_nginx(tmp_path / "special", "specialized-workers", absent=absent) as nginx:
        for process, method, path, upstream in FALLBACK_CASES:
            answer = nginx.request(method, path)
            assert (answer.status, answer.upstream, answer.process) == (200, upstream, "main"), (
                process
            )
    with running_nginx(tmp_path / "one", "one-of-each", absent={"generic-0"}) as nginx:
        for path in (SYNC, "/_matrix/client/v3/rooms/!r:x/messages", KEYS_QUERY):
            answer = nginx.request("POST" if path == KEYS_QUERY else "GET", path)
            assert (answer.status, answer.process) == (200, "main"), path
        assert nginx.request("PUT", "/_matrix/client/v3/sendToDevice/m/t1").process == (
            "stream-writer-2-to-device"
        )


def test_a_class_without_fallback_answers_503_with_retry_after_while_down(tmp_path: Path) -> None:
    absent = {"stream-writer-1-typing", "media-repository-0"}
    with running_nginx(tmp_path / "special", "specialized-workers", absent=absent) as nginx:
        for _ in range(2):  # the first request finds the refusal, the next one the failed server
            assert_unavailable(nginx.request("PUT", "/_matrix/client/v3/rooms/!r:x/typing/@a:x"))
            assert_unavailable(nginx.request("GET", "/_matrix/media/v3/download/x/abc"))
            head = nginx.request("HEAD", "/_matrix/client/v1/media/download/x/abc")
            assert_unavailable(head, head=True)
        assert nginx.request("GET", SYNC).process == "sync-0"  # the others are untouched
    with running_nginx(tmp_path / "main", "specialized-workers", absent={"main"}) as nginx:
        assert_unavailable(nginx.request("POST", "/_matrix/client/v3/logout"))
        assert nginx.request("GET", SYNC).process == "sync-0"
