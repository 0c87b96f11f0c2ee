"""Metrics section (``matrix_synapse_metrics_file_sd_*``): Prometheus service discovery.

Whether processes expose metrics, and on which ports and addresses, are the listener keys of the
homeserver section (``matrix_synapse_metrics_enabled``, ``..._metrics_port``,
``..._metrics_bind_addresses``) and the workers' ``..._metrics_range_start`` blocks; this section
says where the list of every process's metrics endpoint goes (``deploys.core.metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass

from deploys.core.settings.reader import Reader, is_abs_path

FILE_SD_SUFFIX = ".json"


@dataclass(frozen=True)
class MetricsSettings:
    """The metrics settings.

    Attributes:
        file_sd_path: where the Prometheus ``file_sd`` JSON goes on the main host, or None for no
            file. Written only while ``matrix_synapse_metrics_enabled`` is true.
    """

    file_sd_path: str | None


def read(r: Reader) -> MetricsSettings:
    return MetricsSettings(
        file_sd_path=r.check(
            "matrix_synapse_metrics_file_sd_path",
            lambda v: v is None or (is_abs_path(v) and v.endswith(FILE_SD_SUFFIX)),
            "allowed: None or an absolute path ending in .json (Prometheus reads file_sd files "
            "by their suffix), e.g. '/srv/prometheus/targets/synapse.json'",
        ),
    )
