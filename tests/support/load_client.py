"""A Matrix client that keeps a homeserver busy through nginx and records what every request saw.

It runs INSIDE a test host (standard library only; shipped over SSH and started in the
background by `LoadClient`), so what it measures is what a client next to nginx sees, without the
SSH bridge in the way. Until SIGTERM it keeps, concurrently, one loop per endpoint class:

- ``sync``: one long-poll ``/sync`` loop per user (several users, so the requester hash spreads
  them over the sync or generic workers), each following its own ``next_batch``;
- ``messages`` (``/rooms/<id>/messages``), ``versions``, ``joined_rooms``, ``profile`` and
  ``pushers`` (served by the main process): GETs, one after the other;
- ``send``: one loop per user, ``PUT /rooms/<id>/send/m.room.message/<txn>`` with a fresh
  transaction id each time; each 200's ``event_id`` is kept, so the caller can check every one
  is in ``/messages`` afterwards;
- ``typing``: ``PUT /rooms/<id>/typing/<user>``, users in turn.

Every request is recorded: when it started, its endpoint class, its status (or ``"conn"`` for a
connection error or timeout), nginx's ``X-Synapse-Upstream`` header and its latency. On SIGTERM
the loops stop (a long-poll in flight ends within its timeout) and the summary is written as
JSON to the output path (atomically: written, then renamed), for each endpoint class: counts of
2xx, 4xx, 5xx and connection errors, the statuses seen, the upstreams that answered, the first
and last error time (the error window) and the first errors in detail; plus every send that
got 200.

Against the stand-in Synapse (tests/support/standin_synapse.py), which answers 200 with
``{"standin": <process>}`` for any path, the same loops run; only the status and the upstream
mean anything there (no event ids, no ``next_batch``).

In the guest: ``python3 load_client.py CONFIG.json OUTPUT.json`` runs the load;
``python3 load_client.py --events CONFIG.json`` prints every event id of the room (``/messages``
paged back to the room's start) as a JSON list. The config holds ``base`` (nginx's URL),
``room_id``, ``users`` (``user_id`` and ``token`` each) and optionally ``interval`` (seconds
between a loop's requests) and ``sync_timeout_ms``. On the controller, `LoadClient` ships this
file, starts it in the background (its PID recorded), stops it by that PID and reads the summary.
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REQUEST_TIMEOUT = 90.0  # a send may wait while Synapse retries a replication call (up to ~31 s)
DETAILS_KEPT = 20  # errors kept in full per class


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.records = []  # (started, class, status, upstream, seconds)
        self.details = {}  # class -> first errors in detail
        self.sent = []  # sends answered 200: event id, user, transaction id, time

    def add(self, cls, started, status, upstream, seconds, detail=None):
        with self.lock:
            self.records.append((started, cls, status, upstream, seconds))
            if detail is not None and not 200 <= _code(status) < 300:
                kept = self.details.setdefault(cls, [])
                if len(kept) < DETAILS_KEPT:
                    kept.append({"t": started, "status": status, "upstream": upstream, **detail})

    def summary(self, started, stopped):
        classes = {}
        with self.lock:
            records = list(self.records)
        for t, cls, status, upstream, seconds in records:
            c = classes.setdefault(
                cls,
                {
                    "requests": 0,
                    "2xx": 0,
                    "4xx": 0,
                    "5xx": 0,
                    "conn": 0,
                    "other": 0,
                    "statuses": {},
                    "upstreams": {},
                    "first_error": None,
                    "last_error": None,
                    "max_seconds": 0.0,
                },
            )
            c["requests"] += 1
            c["statuses"][str(status)] = c["statuses"].get(str(status), 0) + 1
            key = upstream or "-"
            c["upstreams"][key] = c["upstreams"].get(key, 0) + 1
            c["max_seconds"] = max(c["max_seconds"], round(seconds, 3))
            code = _code(status)
            bucket = (
                "conn"
                if status == "conn"
                else "2xx"
                if 200 <= code < 300
                else "4xx"
                if 400 <= code < 500
                else "5xx"
                if 500 <= code < 600
                else "other"
            )
            c[bucket] += 1
            if bucket in ("5xx", "conn"):
                c["first_error"] = t if c["first_error"] is None else min(c["first_error"], t)
                c["last_error"] = t if c["last_error"] is None else max(c["last_error"], t)
        for cls, c in classes.items():
            c["errors"] = self.details.get(cls, [])
        return {"started": started, "stopped": stopped, "classes": classes, "sent": self.sent}


def _code(status):
    return status if isinstance(status, int) else 0


class Client:
    def __init__(self, config, recorder, stop):
        self.base = config["base"].rstrip("/")
        self.room = config.get("room_id", "!standin:example.org")
        self.users = config.get("users") or [{"user_id": "@standin:example.org", "token": ""}]
        self.interval = float(config.get("interval", 0.1))
        self.sync_timeout_ms = int(config.get("sync_timeout_ms", 5000))
        self.recorder = recorder
        self.stop = stop

    def request(self, cls, method, path, user, body=None):
        """One request; records it and returns (status, parsed body or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if user.get("token"):
            request.add_header("Authorization", "Bearer " + user["token"])
        started = time.time()
        upstream, detail, raw = None, None, b""
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                status, upstream = response.status, response.headers.get("X-Synapse-Upstream")
                raw = response.read()
        except urllib.error.HTTPError as error:
            status, upstream = error.code, error.headers.get("X-Synapse-Upstream")
            raw = error.read()
            detail = {
                "body": raw[:300].decode(errors="replace"),
                "retry_after": error.headers.get("Retry-After"),
            }
        except (OSError, ValueError) as error:  # refused, reset, timed out, bad answer
            status, detail = "conn", {"error": f"{type(error).__name__}: {error}"}
        self.recorder.add(cls, started, status, upstream, time.time() - started, detail)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed

    def pause(self):
        self.stop.wait(self.interval)

    # ------------------------------------------------------------------ the loops

    def sync_loop(self, user):
        since = None
        light = json.dumps({"room": {"timeline": {"limit": 1}}, "presence": {"types": []}})
        while not self.stop.is_set():
            query = {"timeout": str(self.sync_timeout_ms if since else 0), "filter": light}
            if since:
                query["since"] = since
            status, body = self.request(
                "sync", "GET", "/_matrix/client/v3/sync?" + urllib.parse.urlencode(query), user
            )
            if status == 200 and isinstance(body, dict) and body.get("next_batch"):
                since = body["next_batch"]
            else:
                self.pause()  # an error, or the stand-in: do not spin

    def send_loop(self, user):
        room = urllib.parse.quote(self.room)
        number = 0
        while not self.stop.is_set():
            number += 1
            txn = uuid.uuid4().hex
            text = f"load {user['user_id']} {number}"
            status, body = self.request(
                "send",
                "PUT",
                f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                user,
                {"msgtype": "m.text", "body": text},
            )
            if status == 200 and isinstance(body, dict) and body.get("event_id"):
                with self.recorder.lock:
                    self.recorder.sent.append(
                        {"event_id": body["event_id"], "user": user["user_id"], "txn": txn}
                    )
            self.pause()

    def typing_loop(self):
        room = urllib.parse.quote(self.room)
        turn = 0
        while not self.stop.is_set():
            user = self.users[turn % len(self.users)]
            turn += 1
            who = urllib.parse.quote(user["user_id"])
            self.request(
                "typing",
                "PUT",
                f"/_matrix/client/v3/rooms/{room}/typing/{who}",
                user,
                {"typing": True, "timeout": 5000},
            )
            self.pause()

    def get_loop(self, cls, path_for):
        turn = 0
        while not self.stop.is_set():
            user = self.users[turn % len(self.users)]
            turn += 1
            self.request(cls, "GET", path_for(user), user)
            self.pause()

    def loops(self):
        room = urllib.parse.quote(self.room)
        gets = {
            "messages": lambda u: f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5",
            "versions": lambda u: "/_matrix/client/versions",
            "joined_rooms": lambda u: "/_matrix/client/v3/joined_rooms",
            "profile": lambda u: "/_matrix/client/v3/profile/" + urllib.parse.quote(u["user_id"]),
            "pushers": lambda u: "/_matrix/client/v3/pushers",
        }
        for user in self.users:
            yield self.sync_loop, (user,)
            yield self.send_loop, (user,)
        yield self.typing_loop, ()
        for cls, path_for in gets.items():
            yield self.get_loop, (cls, path_for)


def room_event_ids(config):
    """Every event id of the room, paging ``/messages`` backwards from the end."""
    room = urllib.parse.quote(config["room_id"])
    user = config["users"][0]
    ids, token = [], None
    while True:
        query = {"dir": "b", "limit": "1000", **({"from": token} if token else {})}
        path = f"/_matrix/client/v3/rooms/{room}/messages?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(config["base"].rstrip("/") + path)
        request.add_header("Authorization", "Bearer " + user["token"])
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            page = json.load(response)
        ids.extend(event["event_id"] for event in page.get("chunk", []))
        if not page.get("chunk") or not page.get("end"):
            return ids
        token = page["end"]


def main(argv):
    if argv[0] == "--events":
        with open(argv[1], encoding="utf-8") as stream:
            print(json.dumps(room_event_ids(json.load(stream))))
        return 0
    config_path, output = argv
    with open(config_path, encoding="utf-8") as stream:
        config = json.load(stream)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    recorder = Recorder()
    client = Client(config, recorder, stop)
    started = time.time()
    threads = [
        threading.Thread(target=loop, args=args, daemon=True) for loop, args in client.loops()
    ]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(1.0)
    deadline = time.time() + REQUEST_TIMEOUT + 5
    for thread in threads:
        thread.join(max(0.0, deadline - time.time()))
    summary = recorder.summary(started, time.time())
    summary["unfinished_loops"] = sum(thread.is_alive() for thread in threads)
    with open(output + ".tmp", "w", encoding="utf-8") as stream:
        json.dump(summary, stream)
    os.replace(output + ".tmp", output)
    return 0


def matrix_users(host, names, base="http://127.0.0.1:8088"):
    """Controller side: register ``names`` (``register_new_matrix_user`` against main), log each
    in through nginx, have the first create a public room and the others join it; the load
    client's config. The homeserver must allow that many logins (``rc_login``)."""

    def call(method, path, body, token=None):
        header = f"-H 'Authorization: Bearer {token}' " if token else ""
        out = host.ssh(
            f"curl -sS -f -X {method} {header}-H 'Content-Type: application/json' "
            f"--data-binary @- {base}{path}",
            input=json.dumps(body),
        ).stdout
        return json.loads(out)

    users = []
    for name in names:
        host.ssh(
            "/opt/venvs/matrix-synapse/bin/register_new_matrix_user -c "
            f"/etc/matrix-synapse/homeserver.yaml -u {name} -p pass-{name} --no-admin "
            "http://127.0.0.1:8008"
        )
        identifier = {"type": "m.id.user", "user": name}
        login = call(
            "POST",
            "/_matrix/client/v3/login",
            {"type": "m.login.password", "identifier": identifier, "password": f"pass-{name}"},
        )
        users.append({"user_id": login["user_id"], "token": login["access_token"]})
    room = call(
        "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, users[0]["token"]
    )
    for user in users[1:]:
        call("POST", f"/_matrix/client/v3/join/{room['room_id']}", {}, user["token"])
    return {"base": base, "room_id": room["room_id"], "users": users}


def standin_users(count, base="http://127.0.0.1:8088"):
    """A config for the stand-in Synapse, which checks no token: ``count`` users whose tokens
    look like Synapse's (``syt_<base64 localpart>_...``), so nginx's requester hash spreads
    them as it would real users."""
    import base64

    users = []
    for number in range(count):
        local = f"user{number}"
        encoded = base64.b64encode(local.encode()).decode().rstrip("=")
        users.append({"user_id": f"@{local}:example.org", "token": f"syt_{encoded}_x_0"})
    return {"base": base, "room_id": "!standin:example.org", "users": users}


class LoadClient:
    """The controller's handle on one load client in a test host (``host``: a TestHost).

    ``start`` ships this file and the config over SSH and starts the client in the background,
    recording its PID; ``stop`` sends that PID SIGTERM and returns the summary it writes.
    """

    def __init__(self, host, config, name="load"):
        self.host, self.config = host, config
        self.script = f"/root/{name}_client.py"
        self.config_path = f"/root/{name}.json"
        self.output = f"/root/{name}.out.json"
        self.pid = None

    def ship(self):
        with open(__file__, encoding="utf-8") as stream:
            self.host.ssh(f"cat > {self.script}", input=stream.read())
        self.host.ssh(f"cat > {self.config_path}", input=json.dumps(self.config))

    def start(self):
        self.ship()
        out = self.host.ssh(
            f"rm -f {self.output}; setsid python3 {self.script} {self.config_path} {self.output} "
            f"</dev/null >{self.output}.log 2>&1 & echo $!"
        ).stdout
        self.pid = int(out.strip())

    def stop(self):
        """SIGTERM to the client's PID; its summary once it wrote one (loops finish first)."""
        assert self.pid is not None, "not started"
        pid, self.pid = self.pid, None
        wait = int(REQUEST_TIMEOUT + 30)
        self.host.ssh(
            f"kill -TERM {pid}; for i in $(seq {wait * 10}); do "
            f"test -e {self.output} && break; sleep 0.1; done; "
            f"test -e {self.output} || {{ cat {self.output}.log; exit 1; }}",
            timeout=wait + 30,
        )
        return json.loads(self.host.ssh(f"cat {self.output}").stdout)

    def room_event_ids(self):
        self.ship()
        out = self.host.ssh(f"python3 {self.script} --events {self.config_path}").stdout
        return set(json.loads(out))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
