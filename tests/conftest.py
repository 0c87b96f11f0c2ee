"""Shared test setup: the test-host fixtures, and host data built from group_data/all.py."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.support.settings_data import make_data

pytest_plugins = ["tests.support.fixtures"]

# The first collected module after which gevent had patched the stdlib (see below).
_patched_by: list[str] = []


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_anything_patched())


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if not _patched_by and report.nodeid.endswith(".py") and _gevent_patched():
        _patched_by.append(report.nodeid)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Importing pyinfra_cli monkey-patches the stdlib for gevent. In pytest's process that
    changes subprocess, socket and threading for every test of the session, not only for the
    module that imported it (gevent's subprocess.run refuses ``stdin=`` with ``input=``, which
    failed every test host ``ssh(..., input=...)`` in full-suite runs while each file alone
    passed). Run pyinfra_cli in a child process instead (tests/support/deploying.py)."""
    if _patched_by:
        raise pytest.UsageError(
            f"{_patched_by[0]}: collecting it monkey-patched the stdlib for gevent (it imports "
            "pyinfra_cli?); run pyinfra's CLI code in a child process instead"
        )


@pytest.fixture
def data() -> dict[str, Any]:
    return make_data()
