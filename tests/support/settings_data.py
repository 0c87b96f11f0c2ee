"""Host data as pyinfra would see it, for tests that plan and render without a host."""

from __future__ import annotations

from typing import Any

from deploys.core.settings import load_defaults


def make_data(**overrides: Any) -> dict[str, Any]:
    """group_data/all.py plus ``matrix_domain`` and ``overrides``."""
    data = load_defaults()
    data["matrix_domain"] = "example.org"
    data.update(overrides)
    return data
