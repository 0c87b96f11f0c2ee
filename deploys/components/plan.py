"""The current host's settings and worker plan, read once per run by each entry script
(``deploys/synapse.py`` deploys it, ``deploys/status.py`` reports on it), so both see the same
plan."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from deploys.core.plan import WorkerPlan, build_plan
from deploys.core.settings import Settings, SettingsError, parse_settings


def settings_and_plan() -> tuple[Settings, WorkerPlan]:
    """Parse the current host's settings (``host.data``) and plan its processes. Bad settings
    stop the run here, while pyinfra prepares, before any operation runs on any host, with one
    line per problem naming the host, the key, the value and what is allowed."""
    try:
        settings = parse_settings(host.data.dict())
        return settings, build_plan(settings, host.name)
    except SettingsError as error:
        raise PyinfraError(f"{host.name}: {error}") from None
