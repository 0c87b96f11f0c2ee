"""Operation: install the Debian packages and the pinned Synapse in one command."""

from __future__ import annotations

from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import QuoteString, StringCommand, operation

from deploys.facts.install import SynapseInstallation


@operation()
def install_synapse(packages: Sequence[str], venv_path: str, version: str, script: str):
    """
    Install missing Debian packages and the pinned Synapse into its virtualenv, as one command.

    + packages: Debian packages Synapse's host needs
    + venv_path: the virtualenv the units run Synapse from
    + version: the matrix-synapse version to have installed (upgraded when it changes)
    + script: the idempotent install script (``deploys.core.install.install_script``)

    **Example:**

    .. code:: python

        install_synapse(
            name="Install Synapse 1.163.2",
            packages=packages(settings),
            venv_path=settings.install.venv_path,
            version=settings.install.version,
            script=install_script(settings),
        )
    """
    installed = host.get_fact(SynapseInstallation, packages=packages, venv_path=venv_path)
    if not installed.missing and installed.synapse == version:
        host.noop(f"matrix-synapse {version} and {len(packages)} packages already installed")
        return
    yield StringCommand("sh", "-c", QuoteString(script))
