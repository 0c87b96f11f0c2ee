"""Check Synapse configs with the installed Synapse before any process restarts into them.

Runs on the host with the Synapse virtualenv's python (shipped in the deploy archive):

    python synapse_check.py HOMESERVER_YAML CONF_D WORKERS_DIR [--all | NAME ...]

Loads the main process's config and each named worker's (all workers with ``--all``) in ONE
process, as ``python -m synapse.config -c ... -c ...`` would one by one (about 1.5 s each, mostly
imports). Exits 1 with ``<file>: <Synapse's message>`` for the first config Synapse refuses.
"""

from __future__ import annotations

import glob
import os
import sys


def main(argv: list[str]) -> int:
    homeserver, conf_d, workers_dir, *names = argv
    from synapse.config.homeserver import HomeServerConfig

    base = ["-c", homeserver, "-c", conf_d.rstrip("/") + "/"]
    if names == ["--all"]:
        paths = sorted(glob.glob(os.path.join(workers_dir, "*.yaml")))
    else:
        paths = [os.path.join(workers_dir, f"{name}.yaml") for name in names]
    targets = [(homeserver, base)] + [(path, [*base, "-c", path]) for path in paths]
    for path, args in targets:
        try:
            HomeServerConfig.load_config("", args)
        except SystemExit as error:  # argparse / config errors may exit
            print(f"{path}: Synapse refused the config (exit {error.code})", file=sys.stderr)
            return 1
        except Exception as error:  # ConfigError, but also TypeError/KeyError/ValueError
            print(f"{path}: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
    print(f"synapse config check: {len(targets)} configs OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
