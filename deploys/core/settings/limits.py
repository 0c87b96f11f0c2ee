"""Limits section: systemd resource limits for the main process and per worker type.

``matrix_synapse_systemd_resource_limits`` (main) and
``matrix_synapse_workers_systemd_resource_limits`` (worker type key -> directives).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from deploys.core.settings.reader import Reader
from deploys.core.worker_types import WORKER_TYPES_BY_KEY

# systemd [Service] directives accepted as resource limits (systemd.resource-control, .exec).
RESOURCE_LIMIT_DIRECTIVES: Final = frozenset(
    {
        "CPUQuota",
        "CPUWeight",
        "MemoryHigh",
        "MemoryMax",
        "MemorySwapMax",
        "TasksMax",
        "IOWeight",
        "LimitNOFILE",
        "Nice",
    }
)


@dataclass(frozen=True)
class LimitsSettings:
    """Directives by name; each process with any gets a drop-in for its unit.

    Attributes:
        main: the main process's directives.
        workers: worker type key -> the directives for every worker of that type.
    """

    main: Mapping[str, str]
    workers: Mapping[str, Mapping[str, str]]


def read(r: Reader) -> LimitsSettings:
    main_key = "matrix_synapse_systemd_resource_limits"
    return LimitsSettings(
        main=MappingProxyType(_directives(r, main_key, r.raw(main_key) or {})),
        workers=MappingProxyType(_worker_limits(r)),
    )


def _worker_limits(r: Reader) -> dict[str, Mapping[str, str]]:
    key = "matrix_synapse_workers_systemd_resource_limits"
    value = r.raw(key) or {}
    if not isinstance(value, Mapping):
        r.report(key, value, "allowed: a mapping of worker type to directives")
        return {}
    limits = {}
    for type_key, directives in value.items():
        if type_key not in WORKER_TYPES_BY_KEY:
            allowed = ", ".join(WORKER_TYPES_BY_KEY)
            r.report(f"{key}[{type_key!r}]", directives, f"unknown worker type; allowed: {allowed}")
            continue
        limits[type_key] = MappingProxyType(_directives(r, f"{key}[{type_key!r}]", directives))
    return limits


def _directives(r: Reader, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        r.report(key, value, "allowed: a mapping of systemd directives")
        return {}
    bad = sorted(k for k in value if k not in RESOURCE_LIMIT_DIRECTIVES)
    if bad:
        allowed = ", ".join(sorted(RESOURCE_LIMIT_DIRECTIVES))
        r.report(key, value, f"unknown directive {bad[0]!r}; allowed: {allowed}")
    for directive, setting in value.items():
        if not isinstance(setting, (str, int)) or isinstance(setting, bool) or "\n" in str(setting):
            r.report(
                f"{key}[{directive!r}]", setting, "allowed: a single-line string or an integer"
            )
    return {str(k): str(v) for k, v in value.items()}
