"""Run the pyinfra CLI with a counting SSH connector: every remote command and upload is counted.

    python -m tests.support.pyinfra_counted COUNT_FILE.json -- <pyinfra arguments>

Writes ``{"commands": {host: n}, "uploads": {host: n}, "command_lines": {host: [...]}}`` at exit.
pyinfra's own accounting cannot be used: it counts operations, not SSH exec channels.
"""

from __future__ import annotations

import atexit
import collections
import json
import sys

from pyinfra_cli.main import main  # isort: skip  (first: it monkey-patches for gevent)
from pyinfra.connectors.ssh import SSHConnector  # isort: skip

commands: collections.Counter[str] = collections.Counter()
uploads: collections.Counter[str] = collections.Counter()
command_lines: dict[str, list[str]] = collections.defaultdict(list)
_run, _put = SSHConnector.run_shell_command, SSHConnector.put_file


def _counted_run(self, command, *args, **kwargs):
    commands[self.host.name] += 1
    raw = command.get_raw_value() if hasattr(command, "get_raw_value") else command
    command_lines[self.host.name].append(str(raw))
    return _run(self, command, *args, **kwargs)


def _counted_put(self, *args, **kwargs):
    uploads[self.host.name] += 1
    return _put(self, *args, **kwargs)


def _write(path: str) -> None:
    with open(path, "w") as out:
        json.dump({"commands": commands, "uploads": uploads, "command_lines": command_lines}, out)


if __name__ == "__main__":
    count_file, separator, *pyinfra_args = sys.argv[1:]
    assert separator == "--", __doc__
    SSHConnector.run_shell_command = _counted_run  # type: ignore[method-assign]
    SSHConnector.put_file = _counted_put  # type: ignore[method-assign]
    atexit.register(_write, count_file)
    sys.argv = ["pyinfra", *pyinfra_args]
    sys.exit(main())
