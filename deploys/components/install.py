"""Component deploy: the Debian packages and the pinned Synapse virtualenv."""

from __future__ import annotations

from pyinfra.api import deploy

from deploys.core.install import install_script, packages
from deploys.core.settings import Settings
from deploys.operations.install import install_synapse


@deploy("Install Synapse")
def install(settings: Settings, shared: bool = True) -> None:
    """
    Install Python, Redis, nginx and build dependencies from Debian, and matrix-synapse at the
    pinned version into its virtualenv (upgrading it when the pin changes).

    + settings: validated settings (``deploys.core.settings.parse_settings``)
    + shared: this host runs what the cluster shares (Redis, nginx, PostgreSQL): the main host;
      a workers host installs only Synapse and what it builds against
    """
    install_synapse(
        name=f"Install Synapse {settings.install.version} and its Debian packages",
        packages=packages(settings, shared),
        venv_path=settings.install.venv_path,
        version=settings.install.version,
        script=install_script(settings, shared),
    )
