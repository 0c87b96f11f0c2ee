#!/usr/bin/python3 -S
"""A stand-in for Synapse's ``python`` that tests install at ``<venv>/bin/python``.

It behaves like a Synapse process under systemd as far as the deploy can tell: it refuses to start
without its config files, tells systemd it is ready (sd_notify, ``Type=notify``), then becomes
``sleep`` (same PID, about 1 MB) so a thousand of them fit in a small test host.
"""

import os
import socket
import sys

configs = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--config-path=")]
missing = [c for c in configs if not os.path.exists(c)]
if missing:
    sys.exit(f"stand-in: missing config {missing}")
if "--generate-keys" in sys.argv:
    sys.exit(0)
address = os.environ.get("NOTIFY_SOCKET")
if address:
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.connect(address)
        notify.sendall(b"READY=1")
os.execv("/bin/sleep", ["sleep", "infinity"])
