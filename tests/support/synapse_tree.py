"""A cached test-host tree with Synapse, Redis, nginx and PostgreSQL installed.

It is built by running the deploy's own install script (deploys/install.py) in the base tree, so
the install code path is what the end-to-end tests get; the deploy then finds everything present
and its install step is a no-op. Cached by the script's content and the Synapse version.
"""

from __future__ import annotations

from pathlib import Path

from deploys.core.install import install_script
from deploys.core.settings import parse_settings
from tests.support.settings_data import make_data
from tests.support.testhost import ensure_derived_tree

# Settings every end-to-end host uses (PostgreSQL installed on the host itself).
E2E_SETTINGS = {
    "matrix_synapse_database_install_postgresql": True,
    "matrix_synapse_database_password": "synapse-test-password",
}


# For the upgrade test: the tree has this older Synapse, and an offline wheelhouse (the guests
# have no network) holding the pinned one, which the deploy's pip then installs.
PREVIOUS_VERSION = "1.163.1"


def ensure_previous_synapse_tree() -> Path:
    current = parse_settings(make_data(**E2E_SETTINGS))
    previous = parse_settings(make_data(**E2E_SETTINGS, matrix_synapse_version=PREVIOUS_VERSION))
    commands = [
        install_script(previous),
        f"mkdir -p /wheelhouse && {current.install.venv_path}/bin/pip download -q -d /wheelhouse "
        f"'matrix-synapse[postgres,redis]=={current.install.version}'",
        "printf '[global]\\nno-index = true\\nfind-links = /wheelhouse\\n' > /etc/pip.conf",
    ]
    return ensure_derived_tree(
        "synapse-previous", commands, version=f"1-{PREVIOUS_VERSION}-{current.install.version}"
    )


def ensure_synapse_tree() -> Path:
    settings = parse_settings(make_data(**E2E_SETTINGS))
    script = install_script(settings)
    return ensure_derived_tree("synapse", [script], version=f"1-{settings.install.version}")


if __name__ == "__main__":
    print(ensure_synapse_tree())
