"""Fact: what of Synapse's installation a host already has. Paired with
``deploys/operations/install.py``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

from deploys.core.install import PACKAGE_INSTALLED, SYNAPSE_VERSION

# The install script's probe, with "no Synapse in the virtualenv" meaning "not installed" (any
# other failure fails the fact).
_VERSION_OR_NOTHING = f"""
try:
    exec({SYNAPSE_VERSION!r})
except ModuleNotFoundError:
    pass
"""


@dataclass(frozen=True)
class Installation:
    missing: tuple[str, ...] = ()  # Debian packages not installed
    synapse: str | None = None  # the Synapse version in the virtualenv, None: none


class SynapseInstallation(FactBase[Installation]):
    """
    Returns which of the given Debian packages are missing and the Synapse version installed in
    the virtualenv (None if there is none), in one command, with the install script's own probes.

    + packages: Debian packages that must be installed
    + venv_path: the Synapse virtualenv

    .. code:: python

        host.get_fact(SynapseInstallation, packages=["redis-server"],
                      venv_path="/opt/venvs/matrix-synapse")
    """

    default = Installation

    @override
    def command(self, packages: Sequence[str], venv_path: str) -> StringCommand:
        python = QuoteString(f"{venv_path.rstrip('/')}/bin/python")
        return StringCommand(
            "for p in",
            *([QuoteString(p) for p in packages] or ["''"]),
            "; do",
            PACKAGE_INSTALLED,
            '|| echo "missing $p"; done;',
            # No virtualenv or no synapse in it: not installed. Any other failure fails the fact.
            "if [ -x",
            python,
            "]; then v=$(",
            python,
            "-c",
            QuoteString(_VERSION_OR_NOTHING),
            ") || exit 1;",
            'if [ -n "$v" ]; then echo "synapse $v"; fi;',
            "fi",
        )

    @override
    def process(self, output: list[str]) -> Installation:
        missing = tuple(line.split(" ", 1)[1] for line in output if line.startswith("missing "))
        version = next(
            (line.split(" ", 1)[1] for line in output if line.startswith("synapse ")), None
        )
        return Installation(missing, version)
