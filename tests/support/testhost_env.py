"""Where test hosts keep their files, what they need on this machine, and the harness's errors.

Part of the test-host harness (``tests/support/testhost.py`` is the entry point)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("/var/cache/pyinfra-synapse")
DEFAULT_RUN_DIR = Path("/run/pyinfra-synapse")
BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


# Host-side tools and the Debian packages that provide them.
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "socat": "socat",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class TestHostError(RuntimeError):
    """A test host could not be built, booted or stopped."""

    __test__ = False  # not a pytest test class despite the name


class SSHCommandError(subprocess.CalledProcessError):
    """A command run over ssh failed; the message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


# --------------------------------------------------------------------------- environment


def cache_dir() -> Path:
    return Path(os.environ.get("PYINFRA_SYNAPSE_CACHE", DEFAULT_CACHE_DIR))


def run_root() -> Path:
    return Path(os.environ.get("PYINFRA_SYNAPSE_RUN", DEFAULT_RUN_DIR))


def debian_mirror() -> str:
    """The Debian mirror this machine already uses (never hard-coded)."""
    if env := os.environ.get("PYINFRA_SYNAPSE_MIRROR"):
        return env
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:") and not line.rstrip().endswith("-security"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and "security" not in fields[1]:
                return next(f for f in fields[1:] if not f.startswith("["))
    raise TestHostError("no Debian mirror found in /etc/apt; set PYINFRA_SYNAPSE_MIRROR")


def _run(cmd: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command; on failure raise TestHostError with the tail of its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
        raise TestHostError(
            f"{' '.join(map(str, cmd))[:300]} failed (rc={proc.returncode}):\n" + "\n".join(output)
        )
    return proc
