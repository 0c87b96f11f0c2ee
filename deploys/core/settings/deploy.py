"""Deploy section: what a run installs and how it guards a change (lock, config check, readiness).

``read`` returns ``install`` (an ``InstallSettings``) and the run's guards by their ``Settings``
attribute names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from deploys.core.settings.reader import Reader

VERSION_RE: Final = re.compile(r"^[0-9][0-9A-Za-z.+-]*$")
MAX_LOCK_TIMEOUT: Final = 86400  # a day: longer is a hung deploy, not a busy one
MAX_READINESS_TIMEOUT: Final = 3600


@dataclass(frozen=True)
class InstallSettings:
    """``matrix_synapse_install_enabled``, ``_version`` and ``_venv_path``.

    Attributes:
        enabled: install the Debian packages and the pinned Synapse into the virtualenv.
        version: the matrix-synapse version from PyPI.
        venv_path: the virtualenv every unit runs ``<venv_path>/bin/python`` from (installed
            here or provided by the operator).
    """

    enabled: bool
    version: str
    venv_path: str


def read(r: Reader) -> dict[str, Any]:
    """The install settings and the run's guards, by their ``Settings`` attribute names."""
    return {
        "install": InstallSettings(
            enabled=r.boolean("matrix_synapse_install_enabled"),
            version=r.text(
                "matrix_synapse_version",
                VERSION_RE,
                "allowed: a PyPI version of matrix-synapse such as '1.163.2'",
            ),
            venv_path=r.path("matrix_synapse_venv_path"),
        ),
        "deploy_lock_timeout": r.integer("matrix_synapse_deploy_lock_timeout", 0, MAX_LOCK_TIMEOUT),
        "config_check": r.boolean("matrix_synapse_config_check"),
        "readiness_timeout": r.integer(
            "matrix_synapse_readiness_timeout", 0, MAX_READINESS_TIMEOUT
        ),
    }
