"""Per-file baseline for the benchmark: the same desired file set, one pyinfra operation per file.

This is how the deploy would look written the obvious pyinfra way: the very files
``deploys/synapse.py`` writes with the same settings (``deploys.core.render.desired_state``, same
paths, bytes, modes and owners, the nginx routing file included), each shipped by its own
``files.put``, each directory by its own ``files.directory``. It manages files only: no secrets,
no systemd actions, no nginx reload and no readiness wait (starting units the naive way, one
``systemd.service`` per worker, would only add round trips to the baseline).

    pyinfra INVENTORY tests/bench/baseline_deploy.py
"""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import files, server

from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.settings import SettingsError, parse_settings

try:
    settings = parse_settings(host.data.dict())
    plan = build_plan(settings, host.name)
except SettingsError as error:
    raise PyinfraError(f"{host.name}: {error}") from None

desired = desired_state(settings, plan)

server.group(name="Synapse group", group=settings.group, system=True)
server.user(
    name="Synapse user",
    user=settings.user,
    group=settings.group,
    system=True,
    home=settings.data_dir,
    shell="/usr/sbin/nologin",
    ensure_home=False,
)
for directory in desired.directories:
    files.directory(
        name=f"Directory {directory.path}",
        path=directory.path,
        mode=f"{directory.mode:o}",
        user=directory.owner,
        group=directory.group,
    )
for desired_file in desired.files.values():
    # name= keeps the file's content out of pyinfra's output (it would print every argument).
    files.put(
        name=f"File {desired_file.path}",
        src=io.BytesIO(desired_file.content),
        dest=desired_file.path,
        mode=f"{desired_file.mode:o}",
        user=desired_file.owner,
        group=desired_file.group,
    )
