"""Shared test setup: the test-host fixtures, and host data built from group_data/all.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.settings_data import make_data

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture
def data() -> dict[str, Any]:
    return make_data()
