"""Workers section: enabled or not, the preset, the counts (or a hand-written list), the port-range
starts, and the one set of count rules that counts and a hand-written list both obey.

Keys follow matrix-docker-ansible-deploy's names (``WorkerType.count_key`` and friends in
``deploys.core.worker_types``); a count of None takes the preset's count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from deploys.core.settings.reader import Reader, is_int
from deploys.core.settings.worker_list import (
    ENABLED_LIST_KEY,
    WorkerEntry,
    check_names,
    read as read_worker_list,
)
from deploys.core.worker_types import (
    PRESETS,
    SPECIALISED_TYPE_KEYS,
    STREAM_WRITER_PORT_KEYS,
    STREAMS,
    WORKER_TYPES,
    WORKER_TYPES_BY_MDAD_TYPE,
)

# Worker counts. One type's workers take consecutive ports from its port-range start, and the
# default starts are 1,000 apart (group_data/all.py), so 1,000 of a type never reach the next
# block; stream writers of every stream share one block, so they count together. A machine runs
# at most 1,024 workers: 1,000 of one type on top of the largest preset's 18 others stays
# allowed, while the deploy is measured and checked against the real Synapse at 1,000 and a
# Synapse process needs ~120 MiB (1,000 workers: ~120 GiB). Larger counts are typos; refusing
# them here keeps the controller from planning billions of workers.
MAX_WORKERS_PER_TYPE: Final = 1000
MAX_WORKERS_PER_MACHINE: Final = 1024


@dataclass(frozen=True)
class WorkerSettings:
    """The workers of one machine, as settings (``deploys.core.plan`` turns them into processes).

    Attributes:
        enabled: run workers at all (False: main alone, a monolith).
        preset: the preset whose counts fill in every count left at None.
        counts: worker type key -> how many, after the preset; empty when disabled or listed.
        stream_counts: stream name -> how many writers, likewise.
        port_starts: port-range start by its setting key.
        enabled_list: the hand-written list that replaces preset and counts, or None.
    """

    enabled: bool
    preset: str
    counts: Mapping[str, int]
    stream_counts: Mapping[str, int]
    port_starts: Mapping[str, int]
    enabled_list: tuple[WorkerEntry, ...] | None


def read(r: Reader) -> WorkerSettings:
    enabled = r.boolean("matrix_synapse_workers_enabled")
    preset = r.check(
        "matrix_synapse_workers_preset", lambda v: v in PRESETS, "allowed: " + ", ".join(PRESETS)
    )
    explicit = {t.key: _count(r, t.count_key) for t in WORKER_TYPES}
    explicit_streams = {s.name: _count(r, s.count_key) for s in STREAMS}
    port_starts = MappingProxyType({k: r.port(k) for k in port_start_keys()})
    entries = _read_list(r)
    none: Mapping[str, int] = MappingProxyType({})

    set_counts = [t.count_key for t in WORKER_TYPES if explicit[t.key] is not None]
    set_counts += [s.count_key for s in STREAMS if explicit_streams[s.name] is not None]
    if entries and set_counts:
        r.report(
            set_counts[0],
            r.data.get(set_counts[0]),
            f"has no effect because {ENABLED_LIST_KEY} is set (a hand-written list replaces "
            "every count); allowed: None",
        )
    if not enabled:
        if set_counts or entries:
            key = set_counts[0] if set_counts else ENABLED_LIST_KEY
            r.report(
                key,
                r.data.get(key),
                "has no effect because matrix_synapse_workers_enabled is false; allowed: None "
                "(or enable workers)",
            )
        return WorkerSettings(
            enabled=False,
            preset=preset,
            counts=none,
            stream_counts=none,
            port_starts=port_starts,
            enabled_list=None,
        )
    if entries:
        check_names(r, entries)
        counts = {t.key: sum(e.type_key == t.key for e in entries) for t in WORKER_TYPES}
        streams = {s.name: sum(e.stream == s.name for e in entries) for s in STREAMS}
        check_count_rules(r, counts, streams, listed=True)
        return WorkerSettings(
            enabled=True,
            preset=preset,
            counts=none,
            stream_counts=none,
            port_starts=port_starts,
            enabled_list=tuple(entries),
        )
    preset_counts, preset_streams = PRESETS[preset]
    counts = {k: preset_counts.get(k, 0) if v is None else v for k, v in explicit.items()}
    streams = {k: preset_streams.get(k, 0) if v is None else v for k, v in explicit_streams.items()}
    check_count_rules(r, counts, streams, listed=False)
    return WorkerSettings(
        enabled=True,
        preset=preset,
        counts=MappingProxyType(counts),
        stream_counts=MappingProxyType(streams),
        port_starts=port_starts,
        enabled_list=None,
    )


def port_start_keys() -> list[str]:
    """Every port-range start key, in the worker-type table's order."""
    keys: list[str] = []
    for t in WORKER_TYPES:
        if t.http_port_key:
            keys.append(t.http_port_key)
        keys.append(t.metrics_port_key)
    keys.extend(STREAM_WRITER_PORT_KEYS.values())
    return keys


def _count(r: Reader, key: str) -> int | None:
    # The type only: how many is a count rule (check_count_rules).
    return r.check(
        key,
        lambda v: v is None or (is_int(v) and v >= 0),
        f"allowed: a whole number from 0 to {MAX_WORKERS_PER_TYPE}, or None for the preset's count",
    )


def _read_list(r: Reader) -> list[WorkerEntry]:
    value = r.data.get(ENABLED_LIST_KEY)
    if isinstance(value, (list, tuple)) and len(value) > MAX_WORKERS_PER_MACHINE:
        r.raw(ENABLED_LIST_KEY)  # declared, and refused before a million entries are read
        r.problems.append(_too_many_workers(ENABLED_LIST_KEY, f"{len(value)} workers", len(value)))
        return []
    return read_worker_list(r)


def check_count_rules(
    r: Reader, counts: Mapping[str, int], streams: Mapping[str, int], *, listed: bool
) -> None:
    """Every rule on how many workers of each kind, for counts and for a hand-written list.

    Counts name each count key (after the preset filled in the unset ones); a hand-written list
    (``listed``) is named as a whole, with how many of each kind it holds.
    """

    def where(count_key: str, n: int, kind: str) -> tuple[str, Any]:
        return (ENABLED_LIST_KEY, f"{n} {kind}") if listed else (count_key, n)

    for t in WORKER_TYPES:
        n = counts[t.key]
        limit = 1 if t.single else MAX_WORKERS_PER_TYPE
        if n > limit:
            why = (
                "Synapse runs this duty on one worker"
                if t.single
                else f"a type's workers use one {MAX_WORKERS_PER_TYPE}-port block"
            )
            r.report(
                *where(t.count_key, n, f"{t.mdad_type} workers"),
                f"{why}; allowed: " + ("0 or 1" if t.single else f"0 to {limit}"),
            )
    for s in STREAMS:
        if s.single and streams[s.name] > 1:
            r.report(
                *where(s.count_key, streams[s.name], f"{s.name} stream writers"),
                f"Synapse accepts one {s.name} writer; allowed: 0 or 1",
            )
    writers = sum(streams.values())
    if writers > MAX_WORKERS_PER_TYPE:
        largest = max(STREAMS, key=lambda s: streams[s.name])
        r.report(
            *where(largest.count_key, streams[largest.name], f"{largest.name} stream writers"),
            f"{writers} stream writers in all, and the writers of every stream use one "
            f"{MAX_WORKERS_PER_TYPE}-port block; allowed: at most {MAX_WORKERS_PER_TYPE} "
            "stream writers in all",
        )
    generic = WORKER_TYPES_BY_MDAD_TYPE["generic_worker"]
    specialised = [k for k in SPECIALISED_TYPE_KEYS if counts[k] > 0]
    if counts[generic.key] > 0 and specialised:
        r.report(
            *where(
                generic.count_key,
                counts[generic.key],
                f"generic_worker and {specialised[0]} workers",
            ),
            f"generic workers cannot be mixed with {specialised[0]} workers (room, sync, "
            "client_reader, federation_reader); allowed: 0 generic workers when specialised "
            "workers are enabled",
        )
    total = sum(counts.values()) + writers
    if total > MAX_WORKERS_PER_MACHINE:
        if listed:
            r.problems.append(_too_many_workers(ENABLED_LIST_KEY, f"{total} workers", total))
        else:
            key, n = max(((t.count_key, counts[t.key]) for t in WORKER_TYPES), key=lambda kv: kv[1])
            if writers > n:
                largest = max(STREAMS, key=lambda s: streams[s.name])
                key, n = largest.count_key, streams[largest.name]
            r.problems.append(_too_many_workers(key, n, total))


def _too_many_workers(key: str, value: Any, total: int) -> str:
    return (
        f"{key} = {value!r}: this machine would run {total} workers; allowed: at most "
        f"{MAX_WORKERS_PER_MACHINE} workers per machine in all (see group_data/all.py)"
    )
