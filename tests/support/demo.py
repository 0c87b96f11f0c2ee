"""`make demo`: boot a throwaway local systemd host, deploy to it, verify it, keep it running.

Until the real-Synapse install lands (issue "A real Synapse cluster end to end"), the units run the
sd_notify stand-in from tests/support/standin_synapse.py; everything else is the real deploy.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from deploys.settings import REPO_ROOT
from tests.support.deploying import install_standin, write_inventory
from tests.support.testhost import TestHost, ensure_base_tree

DEMO_SETTINGS = {"matrix_synapse_workers_enabled": True, "matrix_synapse_workers_preset": "one-of-each"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit", action="store_true", help="stop the host when done")
    args = parser.parse_args()
    ensure_base_tree()
    host = TestHost.start("synapse-demo")
    try:
        install_standin(host)
        inventory = write_inventory(Path(tempfile.mkdtemp(prefix="synapse-demo-")) / "demo.py",
                                    [(host, DEMO_SETTINGS)])  # fmt: skip
        pyinfra = [str(Path(sys.executable).with_name("pyinfra")), str(inventory), "deploys/synapse.py"]
        subprocess.run([*pyinfra, "-y"], cwd=REPO_ROOT, check=True)
        subprocess.run([sys.executable, "-m", "pytest", "tests/verify", "-q",
                        f"--hosts={host.testinfra_spec()}", f"--inventory={inventory}",
                        "-o", "addopts=", "-p", "no:cacheprovider"], cwd=REPO_ROOT, check=True)  # fmt: skip
        print(f"\nDemo host {host.name} is up: one-of-each workers under systemd.\n"
              f"  shell:    ssh -F {host.ssh_config} {host.name}\n"
              f"  units:    ssh -F {host.ssh_config} {host.name} systemctl list-units 'matrix-synapse*'\n"
              f"  redeploy: .venv/bin/pyinfra {inventory} deploys/synapse.py --dry --diff\n"
              f"  verify:   .venv/bin/pytest tests/verify --hosts={host.testinfra_spec()} "
              f"--inventory={inventory} -o addopts=\n")  # fmt: skip
        if not args.exit:
            print("Press Ctrl-C to stop the demo host.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
