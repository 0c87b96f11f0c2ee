"""Read host data once into a typed, immutable ``Settings`` object, or fail naming every bad key.

Pure: no pyinfra imports. One module per section, each declaring each of its keys once (type and
allowed values; the default is the value in ``group_data/all.py``, the only home of defaults) and
checking the rules between its own keys:

- ``reader``: the typed ``Reader``, ``SettingsError``/``problem``, ``load_defaults``;
- ``homeserver``: name, accounts, paths, the main process's listeners (top-level attributes);
- ``deploy``: ``install`` (Synapse version, virtualenv) and the run's lock, config check and
  readiness timeout;
- ``database``, ``redis``, ``nginx``, ``limits``, ``metrics``, ``restarts``, ``cluster``,
  ``tls``: one frozen dataclass each on ``Settings``;
- ``workers`` (counts, presets, port starts and the one set of count rules) with
  ``worker_list`` (the hand-written list);
- ``extension``: the homeserver.yaml pass-through and the keys it may not set.

Rules that need the worker plan (every listener's port unique, nginx's included) are the plan's
(``deploys.core.plan``); rules between the hosts of a cluster are the cluster plan's
(``deploys.core.cluster``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deploys.core.settings import (
    cluster,
    database,
    deploy,
    extension,
    homeserver,
    limits,
    metrics,
    nginx,
    redis,
    restarts,
    tls,
    workers,
)
from deploys.core.settings.cluster import ClusterSettings
from deploys.core.settings.database import DatabaseSettings
from deploys.core.settings.deploy import InstallSettings
from deploys.core.settings.limits import LimitsSettings
from deploys.core.settings.metrics import MetricsSettings
from deploys.core.settings.nginx import NginxSettings
from deploys.core.settings.reader import (
    DEFAULTS_FILE,
    REPO_ROOT,
    Reader,
    SettingsError,
    load_defaults,
    problem,
)
from deploys.core.settings.redis import RedisSettings
from deploys.core.settings.restarts import RestartSettings
from deploys.core.settings.tls import TlsSettings
from deploys.core.settings.worker_list import WorkerEntry
from deploys.core.settings.workers import WorkerSettings

__all__ = [
    "DEFAULTS_FILE",
    "REPO_ROOT",
    "ClusterSettings",
    "DatabaseSettings",
    "InstallSettings",
    "LimitsSettings",
    "MetricsSettings",
    "NginxSettings",
    "RedisSettings",
    "RestartSettings",
    "Settings",
    "SettingsError",
    "TlsSettings",
    "WorkerEntry",
    "WorkerSettings",
    "load_defaults",
    "parse_settings",
    "problem",
]


@dataclass(frozen=True)
class Settings:
    """Every setting of one host, checked. Sections with several keys are nested dataclasses."""

    # homeserver
    domain: str
    public_baseurl: str | None
    report_stats: bool
    enable_registration: bool
    log_level: str
    trusted_key_servers: tuple[Mapping[str, Any], ...]
    user: str
    group: str
    config_dir: str
    data_dir: str
    media_store_path: str
    systemd_dir: str
    http_port: int
    replication_port: int
    metrics_enabled: bool
    metrics_port: int
    bind_addresses: tuple[str, ...]
    replication_bind_addresses: tuple[str, ...]
    metrics_bind_addresses: tuple[str, ...]
    x_forwarded: bool
    # extension
    configuration_extension: Mapping[str, Any]
    # deploy
    install: InstallSettings
    deploy_lock_timeout: int
    config_check: bool
    readiness_timeout: int
    # sections
    database: DatabaseSettings
    redis: RedisSettings
    limits: LimitsSettings
    workers: WorkerSettings
    nginx: NginxSettings
    metrics: MetricsSettings
    restarts: RestartSettings
    cluster: ClusterSettings
    tls: TlsSettings


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Turn pyinfra host data into ``Settings``.

    Args:
        data: host data (``host.data.dict()``): group_data/all.py defaults plus overrides.

    Returns:
        The validated, immutable settings.

    Raises:
        SettingsError: naming every bad key, its value and what is allowed.
    """
    r = Reader(data)
    settings = Settings(
        **homeserver.read(r),
        configuration_extension=extension.read(r),
        **deploy.read(r),
        database=database.read(r),
        redis=redis.read(r),
        limits=limits.read(r),
        workers=workers.read(r),
        nginx=nginx.read(r),
        metrics=metrics.read(r),
        restarts=restarts.read(r),
        cluster=cluster.read(r),
        tls=tls.read(r),
    )
    _check_unknown_keys(r)
    if r.problems:
        raise SettingsError(r.problems)
    return settings


def _check_unknown_keys(r: Reader) -> None:
    known = sorted(r.read)
    for key in sorted(r.data):
        if key.startswith("matrix_synapse_") and key not in r.read:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see group_data/all.py for every key"
            r.report(key, r.data[key], f"unknown setting; {hint}")
