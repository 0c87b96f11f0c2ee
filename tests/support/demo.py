"""`make demo`: boot a throwaway local systemd host, deploy Synapse with the one-of-each workers to
it (PostgreSQL, Redis and nginx on the host), run the verification suite, and keep it running.

The host boots from the cached tree in which the deploy's own install script already ran
(tests/support/synapse_tree.py; the first build takes about a minute).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from deploys.core.plan import build_plan
from deploys.core.settings import REPO_ROOT, parse_settings
from tests.support.deploying import write_inventory
from tests.support.settings_data import make_data
from tests.support.synapse_tree import E2E_SETTINGS, ensure_synapse_tree
from tests.support.testhost import TestHost

DEMO_SETTINGS = {
    **E2E_SETTINGS,
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "one-of-each",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exit", action="store_true", help="stop the host when done")
    args = parser.parse_args()
    host = TestHost.start("synapse-demo", tree=ensure_synapse_tree())
    try:
        inventory = write_inventory(
            Path(tempfile.mkdtemp(prefix="synapse-demo-")) / "demo.py",
            [(host, DEMO_SETTINGS)],
            standin=False,
        )
        pyinfra = str(Path(sys.executable).with_name("pyinfra"))
        subprocess.run(
            [pyinfra, "-y", str(inventory), "deploys/synapse.py"], cwd=REPO_ROOT, check=True
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/verify",
                "-q",
                f"--hosts={host.testinfra_spec()}",
                f"--inventory={inventory}",
                "-o",
                "addopts=",
                "-p",
                "no:cacheprovider",
            ],
            cwd=REPO_ROOT,
            check=True,
        )
        settings = parse_settings(make_data(**DEMO_SETTINGS))
        main_http = build_plan(settings, host.name).main.listener("http").port
        port = host.forward(settings.nginx.listen_port)  # nginx, before main and every worker
        url = f"http://127.0.0.1:{port}/_matrix/client/versions"
        with urllib.request.urlopen(url, timeout=30) as response:  # proves the route from here
            versions = json.load(response)["versions"]
        print(f"""
Synapse (example.org) runs on {host.name} with the one-of-each workers behind nginx.
  homeserver:  {url}  (answers: {", ".join(versions[-3:])}, ...)
  a user:      ssh -F {host.ssh_config} {host.name} \\
                 /opt/venvs/matrix-synapse/bin/register_new_matrix_user \\
                 -c /etc/matrix-synapse/homeserver.yaml -u alice -p secret --no-admin http://127.0.0.1:{main_http}
  shell:       ssh -F {host.ssh_config} {host.name}
  redeploy:    .venv/bin/pyinfra {inventory} deploys/synapse.py --dry --diff
  verify:      .venv/bin/pytest tests/verify --hosts={host.testinfra_spec()} \\
                 --inventory={inventory} -o addopts=
""")
        if not args.exit:
            print("Press Ctrl-C to stop the demo host.")
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
