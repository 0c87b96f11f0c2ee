"""Print the group_data equivalent of a matrix-docker-ansible-deploy ``vars.yml``.

    python -m deploys.import_mdad host_vars/matrix.example.org/vars.yml > group_data/synapse.py

Standard output is the group_data file (valid Python; what could not be carried over is listed at
its end, each key with why); standard error says where any carried-over secret is and whether
this deploy accepts the result. Exit status: 0 accepted; 1 the input cannot be read, or the
result is refused by the settings or the plan (the file is still printed, with each problem);
2 bad arguments. The mapping itself is ``deploys.core.mdad_import``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploys.core.mdad_import import (
    ImportFailed,
    check,
    import_vars,
    load_vars,
    render_group_data,
    secret_lines,
)

PROG = "python -m deploys.import_mdad"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print the pyinfra-synapse group_data equivalent of a "
        "matrix-docker-ansible-deploy vars.yml.",
    )
    parser.add_argument("vars_file", help="the playbook's vars.yml (host_vars/<host>/vars.yml)")
    args = parser.parse_args(argv)
    path = Path(args.vars_file)
    try:
        text = _read(path)
        result = import_vars(load_vars(text, str(path)))
    except ImportFailed as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    output = render_group_data(result, str(path))
    problems = check(result)
    if problems:
        output += "\n# REFUSED by this deploy's settings or plan (fix before deploying):\n"
        output += "".join(f"#   - {p}\n" for p in problems)
    sys.stdout.write(output)
    print(
        f"{PROG}: {len(result.settings)} settings carried over; "
        f"{len(result.not_carried)} not carried over (listed at the end of the output, with why)",
        file=sys.stderr,
    )
    where = secret_lines(output, result)
    if where:
        print(
            f"{PROG}: the output holds secrets in clear text, as the input did: "
            + ", ".join(f"{key} (line {line})" for key, line in where.items())
            + "; keep the file private",
            file=sys.stderr,
        )
    for note in result.notes:
        print(f"{PROG}: to do: {note}", file=sys.stderr)
    if problems:
        print(
            f"{PROG}: error: this deploy refuses the result ({len(problems)} problems, listed "
            "at the end of the output):",
            file=sys.stderr,
        )
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportFailed(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportFailed(f"{path}: is a directory, not a vars.yml file") from None
    except PermissionError:
        raise ImportFailed(f"{path}: permission denied") from None
    except UnicodeDecodeError as e:
        raise ImportFailed(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ImportFailed(f"{path}: cannot be read ({e.strerror})") from None


if __name__ == "__main__":
    sys.exit(main())
