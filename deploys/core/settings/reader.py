"""The typed reader every settings section uses, and how a problem is reported.

One ``Reader`` call declares one key: its type and allowed values. A key's default is never
written here: it is the value in ``group_data/all.py`` (``load_defaults``), which pyinfra puts in
the host data. A value that is bad (or missing) is reported as ``key = value: allowed`` and
replaced, for the rest of the reading only, by that default, so every later rule still runs and
every problem is reported at once; ``parse_settings`` then raises.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import re
import runpy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
DEFAULTS_FILE: Final = REPO_ROOT / "group_data" / "all.py"
# Synapse runs unprivileged: it can bind no port below this.
LOWEST_PORT: Final = 1024
HIGHEST_PORT: Final = 65535


class SettingsError(ValueError):
    """Bad settings. Each problem names the key, the value and what is allowed."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "invalid pyinfra-synapse settings:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


def problem(key: str, value: Any, allowed: str) -> str:
    """Format one problem: ``key = value: allowed``."""
    return f"{key} = {value!r}: {allowed}"


@functools.cache
def _defaults() -> Mapping[str, Any]:
    namespace = runpy.run_path(str(DEFAULTS_FILE))
    return MappingProxyType({k: v for k, v in namespace.items() if not k.startswith("__")})


def load_defaults() -> dict[str, Any]:
    """The defaults exactly as pyinfra loads them from ``group_data/all.py`` (a fresh copy)."""
    return copy.deepcopy(dict(_defaults()))


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_abs_path(value: Any) -> bool:
    return (
        isinstance(value, str) and value.startswith("/") and "\n" not in value and " " not in value
    )


def is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except (TypeError, ValueError):
        return False
    return True


def is_address_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(map(is_ip, value))


class Reader:
    """Reads and checks keys one by one, collecting every problem instead of stopping at one.

    Attributes:
        data: the host data (group_data/all.py plus overrides).
        problems: every problem found so far.
        read: every key some section declared (any other ``matrix_synapse_*`` key is unknown).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.problems: list[str] = []
        self.read: set[str] = set()

    def report(self, key: str, value: Any, allowed: str) -> None:
        self.problems.append(problem(key, value, allowed))

    def default(self, key: str) -> Any:
        """The ``group_data/all.py`` value of ``key``: what a bad or missing value reads as."""
        return copy.deepcopy(_defaults().get(key))

    def raw(self, key: str) -> Any:
        self.read.add(key)
        if key not in self.data:
            self.problems.append(
                f"{key} is missing: define it (group_data/all.py holds every default)"
            )
            return self.default(key)
        return self.data[key]

    def check(self, key: str, ok: Callable[[Any], bool], allowed: str) -> Any:
        value = self.raw(key)
        if key in self.data and not ok(value):
            self.report(key, value, allowed)
            return self.default(key)
        return value

    def boolean(self, key: str) -> bool:
        return self.check(key, lambda v: isinstance(v, bool), "allowed: true or false")

    def integer(self, key: str, lo: int, hi: int) -> int:
        return self.check(
            key, lambda v: is_int(v) and lo <= v <= hi, f"allowed: an integer from {lo} to {hi}"
        )

    def port(self, key: str) -> int:
        """A port a Synapse process binds."""
        return self.integer(key, LOWEST_PORT, HIGHEST_PORT)

    def text(self, key: str, pattern: re.Pattern[str] | None = None, allowed: str = "") -> str:
        def ok(v: Any) -> bool:
            return isinstance(v, str) and v != "" and (pattern is None or bool(pattern.match(v)))

        return self.check(key, ok, allowed or "allowed: a non-empty string")

    def path(self, key: str) -> str:
        return self.check(key, is_abs_path, "allowed: an absolute path")

    def addresses(self, key: str) -> tuple[str, ...]:
        return tuple(
            self.check(
                key,
                is_address_list,
                "allowed: a non-empty list of IP addresses, e.g. ['127.0.0.1']",
            )
        )
