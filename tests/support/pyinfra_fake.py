"""Run an operation's generator offline, the way pyinfra's own operation tests do: ``op._inner``
under a fake state and a fake host whose ``get_fact`` returns canned fact values (pyinfra's
``tests/util.py::FakeState/FakeHost``, reduced to what our operations touch)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from pyinfra.api import StringCommand
from pyinfra.context import ctx_host, ctx_state


@dataclass
class FakeHost:
    """Answers ``get_fact`` from ``facts`` (by fact class, or a callable of the fact's
    arguments); records every fact read, noop and log line."""

    facts: Mapping[type, Any]
    name: str = "fake-host"
    reads: list[tuple[type, dict[str, Any]]] = field(default_factory=list)
    noops: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    def get_fact(self, fact: type, *args: Any, **kwargs: Any) -> Any:
        self.reads.append((fact, kwargs))
        value = self.facts[fact]
        return (
            value(**kwargs)
            if isinstance(value, Callable) and not isinstance(value, type)
            else value
        )

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def log(self, message: str, log_func: Any = None) -> None:
        self.logs.append(message)


def fake_state(diff: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        config=SimpleNamespace(DIFF=diff), is_executing=False, check_for_changes=True
    )


@dataclass
class Outcome:
    commands: list[StringCommand]
    host: FakeHost

    @property
    def shell(self) -> list[str]:
        """Each command as the shell would get it (secrets unmasked)."""
        return [c.get_raw_value() for c in self.commands]

    @property
    def stdin(self) -> list[Any]:
        return [c.connector_arguments.get("_stdin") for c in self.commands]


def run_operation(
    operation: Any, facts: Mapping[type, Any], diff: bool = False, **arguments: Any
) -> Outcome:
    """The commands ``operation(**arguments)`` yields given ``facts``, and the fake host."""
    host = FakeHost(facts)
    with ctx_state.use(fake_state(diff)), ctx_host.use(host):
        commands = list(operation._inner(**arguments))
    return Outcome(commands, host)
