"""Fact: what of Synapse's installation a host already has."""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra.api import FactBase, QuoteString, StringCommand
from typing_extensions import override

_SYNAPSE_VERSION = """
try:
    import synapse
except ModuleNotFoundError:
    pass
else:
    print("synapse", synapse.__version__)
"""


class SynapseInstallation(FactBase[dict[str, object]]):
    """
    Returns which of the given Debian packages are missing and the Synapse version installed in
    the virtualenv (None if there is none), in one command.

    + packages: Debian packages that must be installed
    + venv_path: the Synapse virtualenv

    .. code:: python

        host.get_fact(SynapseInstallation, packages=["redis-server"],
                      venv_path="/opt/venvs/matrix-synapse")
    """

    @staticmethod
    def default() -> dict[str, object]:
        return {"missing": [], "synapse": None}

    @override
    def command(self, packages: Sequence[str], venv_path: str) -> StringCommand:
        python = QuoteString(f"{venv_path.rstrip('/')}/bin/python")
        return StringCommand(
            "for p in",
            *[QuoteString(p) for p in packages],
            "; do",
            "dpkg-query -W -f='${Status}' \"$p\" 2>/dev/null | grep -q 'install ok installed'",
            '|| echo "missing $p"; done;',
            # No virtualenv or no synapse in it: not installed. Any other failure fails the fact.
            "if [ -x",
            python,
            "]; then",
            python,
            "-c",
            QuoteString(_SYNAPSE_VERSION),
            "|| exit 1;",
            "fi",
        )

    @override
    def process(self, output: list[str]) -> dict[str, object]:
        missing = [line.split(" ", 1)[1] for line in output if line.startswith("missing ")]
        version = next(
            (line.split(" ", 1)[1] for line in output if line.startswith("synapse ")), None
        )
        return {"missing": missing, "synapse": version}
