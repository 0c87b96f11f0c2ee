"""The manifest: what the controller tells the host program to do, as typed dataclasses.

Built by the operation (``deploys/operations/files.py`` for a plain batch of files,
``deploys/operations/synapse.py`` for Synapse), shipped as ``manifest.json`` in the archive and
read back here with every field's type checked: a manifest the host cannot read fails the run
naming the field (``manifest.batch.files[3].mode: expected int, got 'x'``), never a guessed
default. Standard library only.

``to_json``/``from_json`` work for any of these dataclasses (and for ``units.Change``, which the
journal stores with the same codec).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from .restarts import RestartSpec
from .units import Change

T = TypeVar("T")


class ManifestError(ValueError):
    """A manifest (or journal) that does not have the expected shape; names the field."""


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file the batch manages: its planned content (by sha256), mode and owner."""

    path: str
    sha256: str
    mode: int
    owner: str
    group: str
    # What the controller read on the host (None: absent); the host refuses a run whose read is
    # stale by the time it holds the lock.
    read_sha256: str | None
    # Archive member holding the new content; None when the controller read it as up to date.
    payload: str | None = None
    # A shell command that must pass with the new file in place, or every file is put back.
    check: str | None = None


@dataclasses.dataclass(frozen=True)
class BatchManifest:
    """A batch of files applied atomically under a lock (``host/batch.py``)."""

    files: tuple[FileEntry, ...]
    lock_path: str
    lock_timeout: float
    # Shell globs of files we own: a match that is not in ``files`` is stale and removed.
    owned_globs: tuple[str, ...] = ()
    # The stale files the controller saw; one found only here means another run meanwhile.
    read_stale: tuple[str, ...] = ()
    # A shell command run after a change, with the changed paths on standard input.
    on_change: str | None = None


@dataclasses.dataclass(frozen=True)
class Directory:
    path: str
    mode: int
    owner: str
    group: str


@dataclasses.dataclass(frozen=True)
class Account:
    """The system account Synapse runs as, created if missing."""

    user: str
    group: str
    home: str


@dataclasses.dataclass(frozen=True)
class RedisCheck:
    """Where Redis listens (``path``: a Unix socket instead of host/port), and how many processes
    must be subscribed to ``channel`` (the server name) before a run counts as ready."""

    host: str
    port: int
    path: str | None
    channel: str
    subscribers: int
    password_path: str | None = None  # a file holding the password Redis requires (AUTH)


@dataclasses.dataclass(frozen=True)
class Readiness:
    """How the host proves that each unit a run (re)started is ready; ``timeout`` 0: no waiting.

    Every such unit must be active under systemd; one in ``health`` must also answer ``GET`` on
    its URL with 200, one in ``reachable`` must accept a TCP connection; and if a Synapse process
    was (re)started, Redis must count every planned process subscribed.
    """

    timeout: int
    # Synapse unit -> its /health URL, on an address its listener binds.
    health: dict[str, str] = dataclasses.field(default_factory=dict)
    # Other unit (nginx) -> (address, port) it listens on.
    reachable: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    redis: RedisCheck | None = None  # None: Redis is not checked


@dataclasses.dataclass(frozen=True)
class SynapseCheck:
    """How the host loads Synapse configs with the installed Synapse (``synapse_check.py``)."""

    python: str  # the Synapse virtualenv's python
    homeserver: str
    conf_d: str
    workers_dir: str


@dataclasses.dataclass(frozen=True)
class DrainSpec:
    """How the host takes processes out of nginx's routing before stopping them
    (``host/drain.py``): their ``server`` lines in the live routing file marked ``down``, nginx
    reloaded, in-flight requests given up to ``grace`` seconds; then the managed file back."""

    path: str  # the live nginx routing file
    sha256: str  # its managed content (what the batch wrote): the only base a drain edits
    grace: float  # seconds a drain waits at most for in-flight requests on drained servers
    unit: str  # reloaded after each rewrite, e.g. nginx.service
    check: str  # must pass with the rewritten file, e.g. "nginx -t -q"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything the Synapse apply (``host/apply.py``) needs, on top of its batch of files."""

    batch: BatchManifest
    journal_path: str
    account: Account
    directories: tuple[Directory, ...]
    # Generated on the host once, never replaced (an empty file counts as missing).
    secrets: tuple[str, ...]
    signing_key: str | None
    synapse_check: SynapseCheck | None
    # What a change to each managed file restarts or reloads (one per file of the batch).
    changes: tuple[Change, ...]
    systemd_dir: str
    planned_workers: tuple[str, ...]
    # Units reloaded (never restarted) when one of their files changes, e.g. nginx.service.
    reloaded_units: tuple[str, ...]
    # Directories we write into but share: files there that are not ours are listed, never touched.
    shared_dirs: tuple[str, ...]
    readiness: Readiness
    drain: DrainSpec | None  # None: nginx routing is off, nothing to drain
    # How changes reach the processes: strategy, batch size, classes, topology (restarts.py).
    restarts: RestartSpec


# --- JSON codec ----------------------------------------------------------------------------------


def to_json(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (frozenset, set)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], text: str | bytes, what: str = "manifest") -> T:
    """Parse ``text`` as a ``cls``, checking every field; raises ManifestError naming it."""
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ManifestError(f"{what}: not JSON ({error})") from None
    return decode(cls, data, what)


def decode(kind: Any, value: Any, where: str, every_key: bool = False) -> Any:
    """``value`` (parsed JSON) as ``kind``: a dataclass, ``str``/``int``/``float``/``bool``,
    ``X | None``, ``tuple[X, ...]``, ``tuple[A, B]``, ``frozenset[X]``, ``list[X]`` or
    ``dict[str, X]``. With ``every_key``, a dataclass's fields with defaults are required too."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return _decode_dataclass(kind, value, where, every_key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return decode(inner, value, where, every_key)
    if origin in (tuple, list, frozenset):
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {_show(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ManifestError(f"{where}: expected {len(args)} items, got {_show(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(decode(a, v, f"{where}[{i}]", every_key) for i, (a, v) in pairs)
        items = [decode(args[0], v, f"{where}[{i}]", every_key) for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {_show(value)}")
        return {str(k): decode(args[1], v, f"{where}[{k!r}]", every_key) for k, v in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int, float, bool):
        # bool is an int to Python, never to us
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{where}: expected {kind.__name__}, got {_show(value)}")
        return value
    raise TypeError(f"{where}: cannot decode {kind!r}")  # a bug in the types above


def _decode_dataclass(cls: Any, value: Any, where: str, every_key: bool) -> Any:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected an object, got {_show(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ManifestError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = decode(hints[name], value[name], f"{where}.{name}", every_key)
        elif every_key or (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ):
            raise ManifestError(f"{where}: missing key {name!r}")
    return cls(**kwargs)


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
