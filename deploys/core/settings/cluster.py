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

SIGNING_KEY_RE: Final = re.compile(r"^ed25519 [A-Za-z0-9_]{1,64} [A-Za-z0-9+/]{43}=?\Z")
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
    # The identity and secrets every process must share (Synapse: events and federation
    # requests are signed on the worker that makes them): with several machines, given here and
    # written on each; None: generated once on the machine (enough for one machine).
    signing_key: str | None = field(repr=False)
    macaroon_secret_key: str | None = field(repr=False)
    form_secret: str | None = field(repr=False)


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
        signing_key=r.check(
            "matrix_synapse_signing_key",
            lambda v: v is None or (isinstance(v, str) and SIGNING_KEY_RE.match(v) is not None),
            "allowed: None or the one line of a Synapse signing key file, 'ed25519 KEY_ID BASE64' "
            "(the main host's secrets/signing.key)",
        ),
        macaroon_secret_key=r.check(
            "matrix_synapse_macaroon_secret_key",
            lambda v: v is None or _is_secret(v),
            "allowed: None or a single-line string of at least 32 characters without spaces "
            "(the main host's secrets/macaroon)",
        ),
        form_secret=r.check(
            "matrix_synapse_form_secret",
            lambda v: v is None or _is_secret(v),
            "allowed: None or a single-line string of at least 32 characters without spaces "
            "(the main host's secrets/form)",
        ),
    )


def _is_secret(value: Any) -> bool:
    """Synapse compares it with the ``Bearer`` token of an HTTP header: one printable word."""
    return isinstance(value, str) and len(value) >= 32 and value.isprintable() and " " not in value
