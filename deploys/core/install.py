"""What a host needs installed, and the idempotent shell script that installs it. Pure.

The deploy runs the script as one remote command when the install fact shows something missing;
the test suite runs the very same script to build its cached test-host tree.
"""

from __future__ import annotations

import shlex
from typing import Final

from deploys.core.settings import Settings

# Debian packages: a venv and what psycopg2 (matrix-synapse[postgres]) compiles against, Redis,
# nginx for worker routing, curl for health checks.
BASE_PACKAGES: Final = (
    "python3",
    "python3-venv",
    "python3-dev",
    "gcc",
    "libpq-dev",
    "ca-certificates",
    "redis-server",
    "nginx-light",
    "curl",
)
POSTGRESQL_PACKAGES: Final = ("postgresql",)
# TLS on: openssl (the certificate fact); "acme": certbot too.
TLS_PACKAGES: Final = ("openssl",)
ACME_PACKAGES: Final = ("certbot",)
# What only the main host of a cluster runs (a workers host reaches the main host's).
SHARED_PACKAGES: Final = ("redis-server", "nginx-light")


# The probes the install fact and the install script share: is the Debian package in ``$p``
# installed (exit status), and which Synapse does a python import (printed; fails without one).
PACKAGE_INSTALLED: Final = (
    "dpkg-query -W -f='${Status}' \"$p\" 2>/dev/null | grep -q 'install ok installed'"
)
SYNAPSE_VERSION: Final = "import synapse; print(synapse.__version__)"


def packages(settings: Settings, shared: bool = True) -> tuple[str, ...]:
    """The Debian packages; ``shared``: the host runs what a cluster shares (Redis, nginx,
    PostgreSQL, the certificate): its main host."""
    if not shared:
        return tuple(p for p in BASE_PACKAGES if p not in SHARED_PACKAGES)
    postgresql = POSTGRESQL_PACKAGES if settings.database.install_postgresql else ()
    tls = TLS_PACKAGES if settings.tls.enabled else ()
    acme = ACME_PACKAGES if settings.tls.mode == "acme" else ()
    return BASE_PACKAGES + postgresql + tls + acme


def synapse_requirement(settings: Settings) -> str:
    return f"matrix-synapse[postgres,redis]=={settings.install.version}"


def install_script(settings: Settings, shared: bool = True) -> str:
    """A POSIX shell script installing missing packages and the pinned Synapse into the venv.

    It changes nothing when everything is present, and prints one ``pyinfra-synapse:`` line per
    change it makes.
    """
    venv = shlex.quote(settings.install.venv_path)
    version = shlex.quote(settings.install.version)
    requirement = shlex.quote(synapse_requirement(settings))
    wanted = " ".join(packages(settings, shared))
    return f"""set -eu
export DEBIAN_FRONTEND=noninteractive
missing=""
for p in {wanted}; do
  {PACKAGE_INSTALLED} \
    || missing="$missing $p"
done
if [ -n "$missing" ]; then
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends $missing >/dev/null
  echo "pyinfra-synapse: installed$missing"
fi
if [ ! -x {venv}/bin/pip ]; then
  python3 -m venv {venv}
  {venv}/bin/pip install -q --upgrade pip
  echo "pyinfra-synapse: created virtualenv {venv}"
fi
have=$({venv}/bin/python -c '{SYNAPSE_VERSION}' 2>/dev/null || true)
if [ "$have" != {version} ]; then
  {venv}/bin/pip install -q {requirement}
  echo "pyinfra-synapse: matrix-synapse ${{have:-none}} -> "{version}
fi
"""
