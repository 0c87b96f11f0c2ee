"""Every fact, pyinfra-style: command output -> fact value, one case per row.

The commands themselves run for real in tests/unit/test_host_fact.py (against a temporary root)
and tests/integration/test_host_fact_real.py (against a systemd host).
"""

from __future__ import annotations

from typing import Any

import pytest

from deploys.core.drift import FileState, HostState
from deploys.facts.files import FileLines, FileStates, glob_word
from deploys.facts.install import Installation, SynapseInstallation
from deploys.facts.postgres import Database, PostgresDatabase
from deploys.facts.synapse import MachineId, SynapseHostState
from deploys.host.units import UnitState

SHA_A = "a" * 64
SHA_B = "b" * 64

CASES: list[tuple[type, list[str], Any]] = [
    # FileStates: stat lines and sha256sum lines, any order; a path with spaces.
    (
        FileStates,
        [
            "F 644 root root 12 /etc/demo/a.conf",
            "F 600 demo adm 0 /etc/demo/my file.conf",
            f"{SHA_A}  /etc/demo/a.conf",
            f"{SHA_B}  /etc/demo/my file.conf",
        ],
        {
            "/etc/demo/a.conf": FileState(0o644, "root", "root", SHA_A, 12),
            "/etc/demo/my file.conf": FileState(0o600, "demo", "adm", SHA_B, 0),
        },
    ),
    (FileStates, [], {}),
    # FileLines: the marker starts each file; the separator line goes.
    (
        FileLines,
        [
            "@@pyinfra-synapse-file@@ /a",
            "one",
            "two",
            "",
            "@@pyinfra-synapse-file@@ /b",
            "",
        ],
        {"/a": ["one", "two"], "/b": []},
    ),
    (MachineId, ["0123abcd\n"], "0123abcd"),
    (MachineId, [], ""),
    # SynapseHostState: journal, directories, files, wants links, list-units lines.
    (
        SynapseHostState,
        [
            "J",
            "D 750 root matrix-synapse /etc/matrix-synapse",
            "F 640 root matrix-synapse 20 /etc/matrix-synapse/homeserver.yaml",
            f"{SHA_A}  /etc/matrix-synapse/homeserver.yaml",
            "W matrix-synapse-worker@g-0.service",
            "W matrix-synapse-worker@gone.service",
            "U matrix-synapse.service loaded active running Synapse",
            "U matrix-synapse-worker@g-0.service loaded failed failed Synapse worker",
        ],
        HostState(
            files={
                "/etc/matrix-synapse/homeserver.yaml": FileState(
                    0o640, "root", "matrix-synapse", SHA_A, 20
                )
            },
            directories={"/etc/matrix-synapse": (0o750, "root", "matrix-synapse")},
            units={
                "matrix-synapse.service": UnitState("loaded", "active", False),
                "matrix-synapse-worker@g-0.service": UnitState("loaded", "failed", True),
                # enabled but not loaded: list-units does not show it
                "matrix-synapse-worker@gone.service": UnitState("not-found", "inactive", True),
            },
            journal_found=True,
        ),
    ),
    (SynapseHostState, [], HostState()),
    # SynapseInstallation: missing packages and the version (none: no Synapse).
    (
        SynapseInstallation,
        ["missing gcc", "missing nginx-light", "synapse 1.163.2"],
        Installation(("gcc", "nginx-light"), "1.163.2"),
    ),
    (SynapseInstallation, [], Installation((), None)),
    # PostgresDatabase: psql -At -F '|' rows; nothing before PostgreSQL is installed.
    (
        PostgresDatabase,
        ["role|SCRAM-SHA-256$4096:c2FsdA==$a:b", "db|C|C", "max|220"],
        Database("SCRAM-SHA-256$4096:c2FsdA==$a:b", ("C", "C"), 220),
    ),
    (PostgresDatabase, ["role|", "max|100"], Database("", None, 100)),
    (
        PostgresDatabase,
        [
            "unit|matrix-synapse.service loaded active running Synapse",
            "unit|matrix-synapse-worker@generic-0.service loaded activating start Synapse worker",
            "unit|",
            "max|300",
        ],
        Database(
            None,
            None,
            300,
            ("matrix-synapse.service", "matrix-synapse-worker@generic-0.service"),
        ),
    ),
    (PostgresDatabase, [], Database()),
]


@pytest.mark.parametrize(
    ("fact", "output", "expected"),
    CASES,
    ids=[f"{fact.__name__}-{i}" for i, (fact, _, _) in enumerate(CASES)],
)
def test_fact_output_to_value(fact: type, output: list[str], expected: Any) -> None:
    assert fact().process(output) == expected


@pytest.mark.parametrize(
    "fact",
    [FileStates, FileLines, MachineId, SynapseHostState, SynapseInstallation, PostgresDatabase],
)
def test_a_fact_with_no_output_from_pyinfra_gets_its_default(fact: type) -> None:
    # pyinfra returns the fact's default when the command printed nothing at all.
    default = fact.default()
    assert default == fact().process([])


@pytest.mark.parametrize(
    ("pattern", "word"),
    [
        ("/etc/demo/*.conf", "/etc/demo/*.conf"),
        ("/etc/my demo/[ab]?.conf", "/etc/my\\ demo/[ab]?.conf"),
        ("/etc/$HOME/`x`;*", "/etc/\\$HOME/\\`x\\`\\;*"),
    ],
)
def test_glob_words_expand_globs_and_nothing_else(pattern: str, word: str) -> None:
    assert glob_word(pattern) == word


def test_the_install_fact_and_the_install_script_share_their_probes() -> None:
    from deploys.core.install import PACKAGE_INSTALLED, SYNAPSE_VERSION, install_script
    from deploys.core.settings import parse_settings
    from tests.support.settings_data import make_data

    script = install_script(parse_settings(make_data()))
    fact = SynapseInstallation().command(packages=["gcc"], venv_path="/v").get_raw_value()
    for probe in (PACKAGE_INSTALLED, SYNAPSE_VERSION):
        assert probe in script
    assert PACKAGE_INSTALLED in fact and repr(SYNAPSE_VERSION) in fact


def test_the_postgres_fact_quotes_names_as_sql_literals() -> None:
    import shlex

    command = PostgresDatabase().command(user="o'brien", dbname="d'b").get_raw_value()
    words = shlex.split(command)
    assert "SELECT 'role', coalesce(rolpassword, '') FROM pg_authid WHERE rolname = 'o''brien'" in (
        words
    )
    assert any(w.endswith("WHERE datname = 'd''b'") for w in words)
