#!/usr/bin/python3 -S
"""A stand-in for Synapse's ``python``: what the units start as ``<venv>/bin/python -m
synapse.app.homeserver`` (or ``generic_worker``) ``--config-path=...``.

Tests install it as ``<venv>/bin/standin_synapse.py``, byte-compiled, behind a three-line
``<venv>/bin/python`` launcher (``install_standin`` in tests/support/deploying.py); it also runs
as a script. It behaves like a Synapse process wherever the deploy can tell, and costs about
2.8 MB (PSS) per process, so a thousand of them fit on one test host:

- it reads every ``--config-path`` (a directory means its ``*.yaml`` files, sorted, as Synapse
  does; later files replace earlier top-level keys) and exits non-zero naming the file and line
  on a config it cannot read or parse. It parses the YAML subset the deploy renders (block
  mappings and sequences, JSON-style flow values, plain and quoted scalars, comments) and
  refuses anything else (anchors, tags, block scalars, multi-line scalars) by name;
- it binds every ``http`` and ``metrics`` listener of its config (main: ``listeners``, a worker:
  ``worker_listeners``) on each of its ``bind_addresses`` (or its unix socket ``path``), and
  exits non-zero naming the address if one cannot be bound. HTTP listeners answer
  ``GET /health`` with ``200 OK`` and any other path with ``200 {"standin": "<worker_name or
  main>"}`` (so routing tests can tell who answered); metrics listeners answer
  ``/_synapse/metrics`` and 404 elsewhere;
- with ``redis.enabled`` it connects to Redis (``host``/``port`` or ``path``, ``password`` or
  ``password_path``) and subscribes to the channel ``<server_name>``, as Synapse's replication
  does, so ``PUBSUB NUMSUB <server_name>`` counts it; it exits non-zero if Redis goes away
  (systemd restarts it);
- only then it tells systemd ``READY=1`` (sd_notify, ``Type=notify``) and serves forever in one
  thread (a ``select`` loop). SIGTERM ends it. SIGHUP (``systemctl reload``) re-reads the log
  config (``log_config``, a worker's ``worker_log_config``), as Synapse does once started, and
  logs ``reloaded log config PATH (root level LEVEL)``; a log config it cannot read is logged
  and the process keeps running, as Synapse's reload fails (before it is ready a SIGHUP ends it,
  as it ends Synapse before its handler is installed).
- ``--generate-keys`` (the main unit's ExecStartPre) reads the config and exits 0.

Test-only fault hook, for faults that cannot be produced for real: if
``/etc/matrix-synapse-standin/<worker_name or "main">.fault`` exists when the process starts and
contains ``no-health``, the process starts, subscribes and reports READY as usual but answers
``/health`` with ``503`` for as long as it runs.

Besides ``os`` and ``sys`` it imports only C modules (``_socket``, ``select``, ``_signal``): the
``socket`` and ``json`` modules alone would add about 1 MB to every process.
"""

import _signal
import _socket
import os
import select
import sys

FAULT_DIR = "/etc/matrix-synapse-standin"
NAME = "main"  # worker_name, or "main": in log lines, answers and the fault file's name


class ConfigError(Exception):
    pass


# --------------------------------------------------------------------------- YAML subset

_NULLS = ("", "~", "null", "Null", "NULL")
_TRUE = ("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON")
_FALSE = ("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF")
_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "0": "\0",
}


def _plain(text):
    """A plain scalar resolved as PyYAML's safe loader does for the forms the deploy writes."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    digits = text.lstrip("+-").replace("_", "")
    if digits.isdigit() and digits.isascii():
        if len(digits) > 1 and digits[0] == "0":  # YAML 1.1 octal; "08" is a string
            if digits.strip("01234567"):
                return text
            number = int(digits, 8)
        else:
            number = int(digits)
        return -number if text[0] == "-" else number
    if "." in digits and digits.replace(".", "", 1).isdigit():
        return float(text.replace("_", ""))
    if text[0] in "&*!|>%@`":
        raise ConfigError(f"unsupported YAML (anchor, alias, tag or block scalar): {text!r}")
    return text


def _quoted(text, pos):
    """A quoted scalar starting at text[pos]; returns (value, position after it)."""
    quote, out, i = text[pos], [], pos + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            if quote == "'" and text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if char == "\\" and quote == '"':
            code = text[i + 1 : i + 2]
            if code == "u" or code == "x":
                size = 4 if code == "u" else 2
                out.append(chr(int(text[i + 2 : i + 2 + size], 16)))
                i += 2 + size
                continue
            if code not in _ESCAPES:
                raise ConfigError(f"unsupported escape \\{code} in {text!r}")
            out.append(_ESCAPES[code])
            i += 2
            continue
        out.append(char)
        i += 1
    raise ConfigError(f"unterminated quoted string (multi-line scalars unsupported): {text!r}")


def _flow(text, pos):
    """A flow value (JSON-like) at text[pos]; returns (value, position after it)."""
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos >= len(text):
        raise ConfigError(f"unterminated flow collection: {text!r}")
    char = text[pos]
    if char in "\"'":
        return _quoted(text, pos)
    if char in "[{":
        close, items, pos = "]" if char == "[" else "}", [], pos + 1
        while True:
            while pos < len(text) and text[pos] == " ":
                pos += 1
            if text[pos : pos + 1] == close:
                pos += 1
                break
            item, pos = _flow(text, pos)
            if close == "}":
                if text[pos : pos + 1] != ":":
                    raise ConfigError(f"expected ':' in flow mapping: {text!r}")
                value, pos = _flow(text, pos + 1)
                item = (item, value)
            items.append(item)
            while pos < len(text) and text[pos] == " ":
                pos += 1
            if text[pos : pos + 1] == ",":
                pos += 1
            elif text[pos : pos + 1] != close:
                raise ConfigError(f"expected ',' or {close!r} in flow collection: {text!r}")
        return (dict(items) if close == "}" else items), pos
    end = pos
    while end < len(text) and text[end] not in ",]}" and text[end : end + 2] not in (": ", ":"):
        end += 1
    return _plain(text[pos:end].strip()), end


def _value(text):
    """An inline value: a flow collection, a quoted scalar or a plain scalar, nothing after."""
    if text[0] in "[{\"'":
        value, end = _flow(text, 0)
        if text[end:].strip():
            raise ConfigError(f"unexpected text after a value: {text!r}")
        return value
    return _plain(text)


def _strip_comment(text):
    """Drop a trailing ``# comment`` that is not inside quotes."""
    quote, escaped = None, False
    for i, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'" and (i == 0 or text[i - 1] in " [{,:-"):
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] == " "):
            return text[:i].rstrip()
    return text.rstrip()


def _split_key(text):
    """``key: rest`` -> (key, rest); None if the line is not a mapping entry."""
    if text[0] in "\"'":
        key, end = _quoted(text, 0)
        if text[end : end + 1] == ":" and text[end + 1 : end + 2] in ("", " "):
            return key, text[end + 1 :].strip()
        return None
    if text[0] in "[{":
        return None
    index = text.find(": ")
    if index < 0 and text.endswith(":"):
        index = len(text) - 1
    if index <= 0:
        return None
    return _plain(text[:index].strip()), text[index + 1 :].strip()


class _Parser:
    def __init__(self, text):
        self.lines = []  # [line number, indent, text]
        for number, raw in enumerate(text.splitlines(), 1):
            body = raw.lstrip(" ")
            if body.startswith("\t"):
                raise ConfigError(f"line {number}: tab in indentation")
            body = _strip_comment(body)
            if not body or (not self.lines and body == "---"):
                continue
            if body in ("---", "...") or body.startswith("%"):
                raise ConfigError(f"line {number}: several documents or directives")
            self.lines.append([number, len(raw) - len(raw.lstrip(" ")), body])
        self.i = 0

    def error(self, message):
        number = self.lines[min(self.i, len(self.lines) - 1)][0]
        return ConfigError(f"line {number}: {message}")

    def document(self):
        if not self.lines:
            return None
        try:
            value = self.block(self.lines[0][1])
        except ConfigError as error:
            if str(error).startswith("line "):
                raise
            raise self.error(str(error)) from None  # from a scalar: name the line it is on
        if self.i < len(self.lines):
            raise self.error(f"unexpected text: {self.lines[self.i][2]!r}")
        return value

    def block(self, indent):
        text = self.lines[self.i][2]
        if text == "-" or text.startswith("- "):
            return self.sequence(indent)
        if _split_key(text) is not None:
            return self.mapping(indent)
        value = _value(text)
        self.i += 1
        if self.i < len(self.lines) and self.lines[self.i][1] > indent:
            raise self.error("multi-line scalars are not supported")
        return value

    def nested(self, indent, sequence_allowed):
        """The block under a key or dash at `indent`, or None if there is none."""
        if self.i >= len(self.lines):
            return None
        _, child, text = self.lines[self.i]
        if child > indent:
            return self.block(child)
        if sequence_allowed and child == indent and (text == "-" or text.startswith("- ")):
            return self.sequence(indent)  # YAML lets a mapping's sequence start at its indent
        return None

    def mapping(self, indent):
        result = {}
        while self.i < len(self.lines):
            _, here, text = self.lines[self.i]
            if here < indent or text == "-" or text.startswith("- "):
                break
            if here > indent:
                raise self.error(f"unexpected indentation: {text!r}")
            entry = _split_key(text)
            if entry is None:
                raise self.error(f"expected 'key: value', got {text!r}")
            key, rest = entry
            if rest:
                result[key] = _value(rest)
                self.i += 1
                if self.i < len(self.lines) and self.lines[self.i][1] > indent:
                    raise self.error("multi-line scalars are not supported")
            else:
                self.i += 1
                result[key] = self.nested(indent, sequence_allowed=True)
        return result

    def sequence(self, indent):
        result = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            _, here, text = line
            if here < indent:
                break
            if here > indent or not (text == "-" or text.startswith("- ")):
                if here == indent and _split_key(text) is not None:
                    break  # the next key of the mapping this sequence belongs to
                raise self.error(f"expected '- item', got {text!r}")
            rest = text[1:].lstrip(" ")
            if not rest:
                self.i += 1
                result.append(self.nested(indent, sequence_allowed=False))
                continue
            # "- key: value" / "- - x": the item is a block starting at the text after the dash.
            line[1], line[2] = here + len(text) - len(rest), rest
            result.append(self.block(line[1]))
        return result


def parse_yaml(text):
    return _Parser(text).document()


# --------------------------------------------------------------------------- config


def config_files(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            entries = sorted(os.path.join(path, name) for name in os.listdir(path))
            files.extend(e for e in entries if e.endswith(".yaml") and os.path.isfile(e))
        else:
            files.append(path)
    return files


def read_config(paths):
    config = {}
    for path in config_files(paths):
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from None
        try:
            data = parse_yaml(text)
        except ConfigError as error:
            raise ConfigError(f"cannot parse config {path}: {error}") from None
        except (ValueError, IndexError) as error:
            raise ConfigError(f"cannot parse config {path}: {error!r}") from None
        if isinstance(data, dict):
            config.update(data)  # Synapse merges files key by key, later ones win
        else:
            log(f"{path} is empty or not a key-value map: ignored (as Synapse does)")
    return config


def setting(config, key, kind, default=None):
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ConfigError(f"{key} = {value!r}: expected {kind.__name__}")
    return value


def parse_args(argv):
    """``-m MODULE --config-path=P... [--generate-keys]`` -> (module, paths, generate keys?)."""
    module, paths, generate, i = None, [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            module, i = argv[i + 1], i + 1
        elif arg.startswith("--config-path="):
            paths.append(arg.split("=", 1)[1])
        elif arg in ("--config-path", "-c"):
            paths.append(argv[i + 1])
            i += 1
        elif arg == "--generate-keys":
            generate = True
        else:
            raise ConfigError(f"unsupported argument {arg!r}")
        i += 1
    if module not in ("synapse.app.homeserver", "synapse.app.generic_worker"):
        raise ConfigError(f"unsupported module {module!r}")
    if not paths:
        raise ConfigError("no --config-path")
    return module, paths, generate


# --------------------------------------------------------------------------- serving


def log(message):
    sys.stderr.write(f"stand-in {NAME}: {message}\n")
    sys.stderr.flush()


def bind(listener):
    kind = setting(listener, "type", str)
    if listener.get("path") is not None:  # a unix socket listener
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            if os.path.exists(listener["path"]):
                os.unlink(listener["path"])
            sock.bind(listener["path"])
        except (OSError, TypeError) as error:
            raise ConfigError(f"cannot bind {kind} listener {listener['path']}: {error}") from None
        sock.listen(64)
        return [(sock, kind)]
    port = listener.get("port")
    if type(port) is not int or not 0 < port < 65536:
        raise ConfigError(f"listener port = {port!r}: expected an integer 1-65535")
    addresses = setting(listener, "bind_addresses", list, ["::", "0.0.0.0"])
    sockets = []
    for address in addresses:
        if not isinstance(address, str):
            raise ConfigError(f"bind_addresses entry {address!r}: expected a string")
        family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((address, port))
        except OSError as error:
            raise ConfigError(f"cannot bind {kind} listener {address}:{port}: {error}") from None
        sock.listen(64)
        sockets.append((sock, kind))
    return sockets


def redis_command(*words):
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def subscribe(redis, channel):
    """A Redis connection subscribed to `channel`, as Synapse's replication client is."""
    where = redis.get("path") or f"{redis.get('host', 'localhost')}:{redis.get('port', 6379)}"
    if redis.get("use_tls"):
        raise ConfigError("redis.use_tls is not supported by the stand-in")
    password = setting(redis, "password", str)
    if redis.get("password_path"):
        with open(redis["password_path"], encoding="utf-8") as stream:
            password = stream.read().strip()
    try:
        if redis.get("path"):
            conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            conn.settimeout(10)
            conn.connect(redis["path"])
        else:
            host, port = redis.get("host", "localhost"), redis.get("port", 6379)
            family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
            if host == "localhost":
                host = "127.0.0.1"
            conn = _socket.socket(family, _socket.SOCK_STREAM)
            conn.settimeout(10)
            conn.connect((host, port))
        reply = b""
        if password:
            conn.sendall(redis_command("AUTH", password))
            while not reply.endswith(b"\r\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
            if not reply.startswith(b"+OK"):
                raise ConfigError(f"Redis at {where} refused AUTH: {reply.strip().decode()}")
            reply = b""
        conn.sendall(redis_command("SUBSCRIBE", channel))
        # Reply: *3 $9 subscribe $<len> <channel> :1 -- complete once the ":" line has arrived.
        while b"\r\n:" not in reply or not reply.endswith(b"\r\n"):
            chunk = conn.recv(4096)
            if not chunk:
                raise ConfigError(f"Redis at {where} closed the connection: {reply!r}")
            reply += chunk
            if reply.startswith(b"-"):
                raise ConfigError(f"Redis at {where} refused SUBSCRIBE: {reply.strip().decode()}")
    except OSError as error:
        raise ConfigError(f"cannot reach Redis at {where}: {error}") from None
    conn.settimeout(None)
    return conn


def notify_ready():
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    notify = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", address)
    notify.close()


def answer(request, kind, healthy):
    """The whole HTTP response to one request (the first line is all that matters)."""
    parts = request.split(b" ", 2)
    path = parts[1].split(b"?")[0] if len(parts) == 3 else b""
    ctype = "text/plain"
    if kind == "metrics":
        status, body = ("200 OK", f'synapse_standin{{worker="{NAME}"}} 1\n')
        if path != b"/_synapse/metrics":
            status, body = "404 Not Found", "not found\n"
    elif path == b"/health":
        status, body = ("200 OK", "OK") if healthy else ("503 Service Unavailable", "no-health")
    else:
        status, body, ctype = "200 OK", f'{{"standin": "{NAME}"}}', "application/json"
    data = body.encode()
    return (
        b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (status.encode(), ctype.encode(), len(data))
        + data
    )


def serve(listeners, redis):
    """Answer HTTP on every listener; exit if Redis drops us. One thread, one select loop."""
    healthy = True
    try:
        with open(f"{FAULT_DIR}/{NAME}.fault", encoding="utf-8") as stream:
            healthy = "no-health" not in stream.read()
    except OSError:
        pass
    if not healthy:
        log(f"fault hook {FAULT_DIR}/{NAME}.fault: answering /health with 503")
    kinds = dict(listeners)  # listening socket -> listener type
    clients = {}  # connected socket -> (listener type, bytes received so far)
    while True:
        watched = [*kinds, *clients] + ([redis] if redis is not None else [])
        readable, _, _ = select.select(watched, [], [])
        for sock in readable:
            if sock is redis:
                try:
                    data = redis.recv(65536)  # published messages: not ours to act on
                except OSError:
                    data = b""
                if not data:
                    log("lost the Redis connection")
                    sys.exit(1)
            elif sock in kinds:
                try:
                    fd, _ = sock._accept()
                except OSError:
                    continue
                client = _socket.socket(fileno=fd)
                client.setblocking(False)
                clients[client] = (kinds[sock], b"")
            else:
                kind, request = clients.pop(sock)
                try:
                    data = sock.recv(8192)
                except OSError:
                    data = b""
                request += data
                if data and b"\r\n\r\n" not in request and len(request) < 8192:
                    clients[sock] = (kind, request)  # the rest of the headers is on its way
                    continue
                if data:
                    # contextlib would cost memory in every process; < 200 bytes never block.
                    try:  # noqa: SIM105
                        sock.send(answer(request, kind, healthy))
                    except OSError:
                        pass
                sock.close()


def reload_log_config(path):
    """What Synapse does on SIGHUP: read the log config again (the stand-in only reports its
    root level; it logs everything to stderr regardless)."""
    if not path:
        return
    try:
        with open(path, encoding="utf-8") as stream:
            data = parse_yaml(stream.read())
        level = data["root"]["level"]
    except (OSError, UnicodeDecodeError, ConfigError, ValueError, KeyError, TypeError) as error:
        log(f"cannot reload log config {path}: {error!r}")
        return
    log(f"reloaded log config {path} (root level {level})")


def main(argv):
    global NAME
    try:
        module, paths, generate = parse_args(argv)
        worker = module == "synapse.app.generic_worker"
        if worker:  # until its config says: the worker's own file is named after it
            NAME = os.path.basename(paths[-1]).removesuffix(".yaml")
        config = read_config(paths)
        server_name = setting(config, "server_name", str)
        if not server_name:
            raise ConfigError("server_name is missing")
        NAME = (setting(config, "worker_name", str) if worker else None) or "main"
        if generate:
            return 0
        listeners = []
        for listener in setting(config, "worker_listeners" if worker else "listeners", list, []):
            if not isinstance(listener, dict):
                raise ConfigError(f"listener {listener!r}: expected a mapping")
            if listener.get("type") in ("http", "metrics"):
                listeners.extend(bind(listener))
        log_config = setting(config, "worker_log_config" if worker else "log_config", str)
        redis = setting(config, "redis", dict, {})
        connection = subscribe(redis, server_name) if redis.get("enabled") else None
        del config
    except ConfigError as error:
        log(f"refusing to start: {error}")
        return 1
    _signal.signal(_signal.SIGHUP, lambda signum, frame: reload_log_config(log_config))
    notify_ready()
    ports = sorted({str(sock.getsockname()[1]) for sock, _ in listeners})
    subscribed = f", subscribed to Redis channel {server_name}" if connection is not None else ""
    log(f"ready: listening on {', '.join(ports) or 'nothing'}{subscribed}")
    serve(listeners, connection)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
