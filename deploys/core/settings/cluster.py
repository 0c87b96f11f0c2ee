"""Cluster section: this host's place among the machines that serve one homeserver.

All hosts of the inventory that share a ``matrix_domain`` form one cluster
(``deploys.core.cluster``). Each host says its role and the address its peers reach it at; the
rules between hosts (one main, unique addresses, ...) are the cluster plan's, since one host's
settings cannot see the others'.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Final

from deploys.core.settings.reader import Reader

ROLE_MAIN: Final = "main"
ROLE_WORKERS: Final = "workers"
ROLE_RETIRED: Final = "retired"
ROLES: Final = (ROLE_MAIN, ROLE_WORKERS, ROLE_RETIRED)

# A DNS host name (RFC 1123 labels); an IP address is checked with ipaddress instead.
HOST_NAME_RE: Final = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@dataclass(frozen=True)
class ClusterSettings:
    """This host's cluster settings.

    Attributes:
        role: ``main`` (the main process, nginx, and Redis/PostgreSQL unless external),
            ``workers`` (only the workers its worker keys plan) or ``retired`` (everything of
            ours removed from it).
        private_address: the IP address or host name the cluster's other machines reach this
            one at, or None (allowed only while the cluster has one machine).
        media_store_shared: ``media_store_path`` is storage shared by every machine that runs
            media repository workers, so they may run on more than one machine.
        replication_secret: the ``worker_replication_secret`` every process of the cluster
            shares (required with more than one machine, the same on each; never printed), or
            None: each machine generates its own (enough for one machine).
    """

    role: str
    private_address: str | None
    media_store_shared: bool
    replication_secret: str | None = field(repr=False)


def is_private_address(value: Any) -> bool:
    """An address another machine can connect to: an IP that is not loopback, unspecified or
    multicast, or a host name other than localhost."""
    if not isinstance(value, str):
        return False
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        name = value.lower().rstrip(".")
        # A last label of digits is a mistyped IP address (10.0.0.256), not a name.
        return (
            bool(HOST_NAME_RE.match(value))
            and name != "localhost"
            and not name.split(".")[-1].isdigit()
        )
    return not (address.is_loopback or address.is_unspecified or address.is_multicast)


def read(r: Reader) -> ClusterSettings:
    return ClusterSettings(
        role=r.check(
            "matrix_synapse_role",
            lambda v: v in ROLES,
            "allowed: " + ", ".join(repr(x) for x in ROLES),
        ),
        private_address=r.check(
            "matrix_synapse_private_address",
            lambda v: v is None or is_private_address(v),
            "allowed: None or the IP address or host name the cluster's other machines reach "
            "this one at (not loopback, unspecified or multicast), e.g. '10.0.0.2'",
        ),
        media_store_shared=r.boolean("matrix_synapse_media_store_shared"),
        replication_secret=r.check(
            "matrix_synapse_worker_replication_secret",
            lambda v: v is None or _is_secret(v),
            "allowed: None or a single-line string of at least 32 characters without spaces, "
            "e.g. from python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
        ),
    )


def _is_secret(value: Any) -> bool:
    """Synapse compares it with the ``Bearer`` token of an HTTP header: one printable word."""
    return isinstance(value, str) and len(value) >= 32 and value.isprintable() and " " not in value
