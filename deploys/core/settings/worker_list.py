"""The hand-written worker list (``matrix_synapse_workers_enabled_list``), entry by entry.

Entries use matrix-docker-ansible-deploy's fields. How many workers of each kind a list may hold
is a count rule, checked with the counts' own rules (``deploys.core.settings.workers``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from deploys.core.settings.reader import HIGHEST_PORT, LOWEST_PORT, Reader, is_int
from deploys.core.worker_types import (
    ACCEPTED_WORKER_APPS,
    STREAM_WRITER,
    STREAMS_BY_NAME,
    WORKER_TYPES_BY_MDAD_TYPE,
)

ENABLED_LIST_KEY: Final = "matrix_synapse_workers_enabled_list"
# A Synapse instance name that is also a systemd instance name and a file name.
WORKER_NAME_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
RESERVED_WORKER_NAMES: Final = frozenset({"main", "master"})
WORKER_NAME_ALLOWED: Final = (
    "allowed: lowercase letters, digits and '-' ([a-z0-9-], at most 64, not starting or ending "
    "with '-'; 'main' and 'master' are reserved)"
)
ENTRY_FIELDS: Final = frozenset(
    {
        "id",
        "name",
        "type",
        "app",
        "port",
        "metrics_port",
        "webserving",
        "replication_port",
        "stream_writer_stream",
    }
)


@dataclass(frozen=True)
class WorkerEntry:
    """One hand-written worker (``matrix_synapse_workers_enabled_list``)."""

    name: str
    type_key: str
    stream: str | None
    http_port: int | None
    replication_port: int | None
    metrics_port: int | None


def read(r: Reader) -> list[WorkerEntry]:
    """Every well-formed entry (the caller refuses a list too long to read first)."""
    value = r.raw(ENABLED_LIST_KEY)
    if value is None or value == []:
        return []
    if not isinstance(value, (list, tuple)):
        r.report(ENABLED_LIST_KEY, value, "allowed: a list of worker mappings")
        return []
    entries = []
    for index, item in enumerate(value):
        entry = _entry(r, f"{ENABLED_LIST_KEY}[{index}]", item)
        if entry is not None:
            entries.append(entry)
    return entries


def check_names(r: Reader, entries: Sequence[WorkerEntry]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            r.report(ENABLED_LIST_KEY, entry.name, "duplicate worker name; allowed: unique names")
        seen.add(entry.name)


def _entry(r: Reader, key: str, item: Any) -> WorkerEntry | None:
    if not isinstance(item, Mapping):
        r.report(key, item, "allowed: a mapping with at least name and type")
        return None
    unknown = sorted(set(item) - ENTRY_FIELDS)
    if unknown:
        r.report(
            f"{key}.{unknown[0]}",
            item[unknown[0]],
            "unknown field; allowed: " + ", ".join(sorted(ENTRY_FIELDS)),
        )
    start = len(r.problems)
    name = item.get("name")
    if not isinstance(name, str) or not _valid_name(name):
        r.report(f"{key}.name", name, WORKER_NAME_ALLOWED)
    worker_type = WORKER_TYPES_BY_MDAD_TYPE.get(item.get("type"))  # type: ignore[arg-type]
    if worker_type is None:
        r.report(
            f"{key}.type", item.get("type"), "allowed: " + ", ".join(WORKER_TYPES_BY_MDAD_TYPE)
        )
    if "app" in item and item["app"] not in ACCEPTED_WORKER_APPS:
        r.report(f"{key}.app", item["app"], "allowed: " + ", ".join(sorted(ACCEPTED_WORKER_APPS)))
    stream = item.get("stream_writer_stream")
    if worker_type is STREAM_WRITER and stream not in STREAMS_BY_NAME:
        r.report(f"{key}.stream_writer_stream", stream, "allowed: " + ", ".join(STREAMS_BY_NAME))
    if worker_type is not None and worker_type is not STREAM_WRITER and stream is not None:
        r.report(f"{key}.stream_writer_stream", stream, "allowed: only on type stream_writer")
    ports = {}
    for field_name in ("port", "replication_port", "metrics_port"):
        port = item.get(field_name)
        if (
            port is not None
            and port != 0
            and not (is_int(port) and LOWEST_PORT <= port <= HIGHEST_PORT)
        ):
            r.report(
                f"{key}.{field_name}",
                port,
                f"allowed: an integer from {LOWEST_PORT} to {HIGHEST_PORT}",
            )
        ports[field_name] = port or None
    if len(r.problems) > start or worker_type is None:
        return None
    return WorkerEntry(
        name=name,
        type_key=worker_type.key,
        stream=stream if worker_type is STREAM_WRITER else None,
        http_port=ports["port"],
        replication_port=ports["replication_port"],
        metrics_port=ports["metrics_port"],
    )


def _valid_name(name: str) -> bool:
    return bool(WORKER_NAME_RE.match(name)) and name not in RESERVED_WORKER_NAMES
