"""Shared test setup: settings built from the real group_data/all.py defaults."""

from __future__ import annotations

from typing import Any

import pytest

from deploys.core.settings import load_defaults

pytest_plugins = ["tests.support.fixtures"]


def make_data(**overrides: Any) -> dict[str, Any]:
    """Host data as pyinfra would see it: group_data/all.py plus overrides."""
    data = load_defaults()
    data["matrix_domain"] = "example.org"
    data.update(overrides)
    return data


@pytest.fixture
def data() -> dict[str, Any]:
    return make_data()
