"""Unit names, list-units parsing and the change records of removed files
(deploys/host/units.py); what a run then does with the changes is the restart planner's
(tests/unit/test_restarts.py)."""

from __future__ import annotations

from deploys.host.units import Change, parse_list_units, stale_change, worker_name, worker_unit


def test_unit_names_round_trip() -> None:
    assert worker_unit("generic-3") == "matrix-synapse-worker@generic-3.service"
    assert worker_name(worker_unit("generic-3")) == "generic-3"
    assert worker_name("matrix-synapse.service") is None
    assert worker_name("matrix-synapse-worker@.service") is None


def test_list_units_output_is_parsed_by_unit() -> None:
    lines = [
        "matrix-synapse.service loaded active running Synapse",
        "matrix-synapse-worker@g.service loaded activating start Synapse worker g",
        "",
    ]
    assert parse_list_units(lines) == {
        "matrix-synapse.service": ("loaded", "active"),
        "matrix-synapse-worker@g.service": ("loaded", "activating"),
    }


def test_stale_change_rules() -> None:
    assert stale_change("/etc/mx/workers/generic-9.yaml", "/etc/systemd/system") == Change(
        "/etc/mx/workers/generic-9.yaml", frozenset({"generic-9"}), False
    )
    dropin = "/etc/systemd/system/matrix-synapse-worker@g.service.d/50-pyinfra-synapse-limits.conf"
    assert stale_change(dropin, "/etc/systemd/system/") == Change(dropin, frozenset(), True)
    assert stale_change("/etc/mx/secrets/database.pgpass", "/etc/systemd/system") == Change(
        "/etc/mx/secrets/database.pgpass", frozenset(), False
    )
