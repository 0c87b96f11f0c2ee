"""Homeserver section: its name, accounts, paths on the host and the main process's listeners.

These keys become top-level attributes of ``Settings`` (``settings.domain``, ``settings.http_port``,
...): ``read`` returns them by attribute name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from deploys.core.settings.reader import Reader

# A server name: a DNS name or IP literal, optionally with a port (Matrix spec, "Server name").
SERVER_NAME_RE: Final = re.compile(
    r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,253}[A-Za-z0-9])?)(:[0-9]{1,5})?$"
)
PUBLIC_BASEURL_RE: Final = re.compile(r"^https?://[^\s]+/$")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Account names that are root: Synapse must run unprivileged. uid 0 is "root" on Debian ("toor"
# is the BSD spare root account); gid 0 is "root" on Debian, "wheel" on the BSDs.
ACCOUNT_NAME_RE: Final = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
ROOT_USERS: Final = frozenset({"root", "toor"})
ROOT_GROUPS: Final = frozenset({"root", "wheel"})


def read(r: Reader) -> dict[str, Any]:
    """Every homeserver key, by its ``Settings`` attribute name."""
    return {
        "domain": r.text(
            "matrix_domain",
            SERVER_NAME_RE,
            "allowed: the homeserver name, a DNS name such as 'example.org'",
        ),
        "public_baseurl": r.check(
            "matrix_synapse_public_baseurl",
            lambda v: v is None or (isinstance(v, str) and bool(PUBLIC_BASEURL_RE.match(v))),
            "allowed: None or an http(s) URL ending in '/'",
        ),
        "report_stats": r.boolean("matrix_synapse_report_stats"),
        "enable_registration": r.boolean("matrix_synapse_enable_registration"),
        "log_level": r.check(
            "matrix_synapse_log_level",
            lambda v: v in LOG_LEVELS,
            "allowed: " + ", ".join(LOG_LEVELS),
        ),
        "trusted_key_servers": tuple(
            r.check(
                "matrix_synapse_trusted_key_servers",
                lambda v: (
                    isinstance(v, (list, tuple))
                    and all(
                        isinstance(s, Mapping) and isinstance(s.get("server_name"), str) for s in v
                    )
                ),
                "allowed: a list of mappings with a server_name, "
                "e.g. [{'server_name': 'matrix.org'}]",
            )
        ),
        "user": _account(r, "matrix_synapse_user", kind="user", root_names=ROOT_USERS),
        "group": _account(r, "matrix_synapse_group", kind="group", root_names=ROOT_GROUPS),
        "config_dir": r.path("matrix_synapse_config_dir"),
        "data_dir": r.path("matrix_synapse_data_dir"),
        "media_store_path": r.path("matrix_synapse_media_store_path"),
        "systemd_dir": r.path("matrix_synapse_systemd_dir"),
        "http_port": r.port("matrix_synapse_http_port"),
        "replication_port": r.port("matrix_synapse_replication_http_port"),
        "metrics_enabled": r.boolean("matrix_synapse_metrics_enabled"),
        "metrics_port": r.port("matrix_synapse_metrics_port"),
        "bind_addresses": r.addresses("matrix_synapse_bind_addresses"),
        "replication_bind_addresses": r.addresses("matrix_synapse_replication_bind_addresses"),
        "metrics_bind_addresses": r.addresses("matrix_synapse_metrics_bind_addresses"),
        "x_forwarded": r.boolean("matrix_synapse_x_forwarded"),
    }


def _account(r: Reader, key: str, *, kind: str, root_names: frozenset[str]) -> str:
    name = r.text(key, ACCOUNT_NAME_RE, f"allowed: a system {kind} name")
    if name in root_names:
        r.report(
            key,
            name,
            f"Synapse must not run as root (uid/gid 0): it would own the whole machine; "
            f"allowed: an unprivileged system {kind} such as 'matrix-synapse'",
        )
    return name
