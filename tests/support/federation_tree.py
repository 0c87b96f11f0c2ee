"""A cached test-host tree for homeservers that get their certificate by ACME: the Synapse tree
(tests/support/synapse_tree.py) plus what the deploy installs for ``matrix_synapse_tls_mode =
"acme"`` (certbot, openssl), installed by the deploy's own install script, so the deploy's install
step is a no-op on it too (the guests have no network for apt).
"""

from __future__ import annotations

from pathlib import Path

from deploys.core.install import install_script
from deploys.core.settings import parse_settings
from tests.support.settings_data import make_data
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import ensure_derived_tree


def ensure_synapse_acme_tree() -> Path:
    settings = parse_settings(make_data(**E2E_SETTINGS, matrix_synapse_tls_mode="acme"))
    return ensure_derived_tree(
        "synapse-acme",
        [install_script(settings)],
        version=f"1-{settings.install.version}",
        base=ensure_synapse_tree(),
    )


if __name__ == "__main__":
    print(ensure_synapse_acme_tree())
