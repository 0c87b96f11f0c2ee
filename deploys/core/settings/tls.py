"""TLS section (``matrix_synapse_tls_*``, ``matrix_synapse_well_known_*``): nginx's public HTTPS
servers, their certificate and the delegation files they serve.

``off`` (nginx serves only its plain loopback server), ``acme`` (certbot obtains and renews the
certificate through nginx's port-80 server, HTTP-01, from any ACME directory) or ``files`` (the
operator's certificate and key). The public servers route exactly as the plain one
(``deploys.core.routing``); what they add is in ``deploys.core.tls``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from deploys.core.settings.nginx import SERVER_NAME_RE
from deploys.core.settings.reader import HIGHEST_PORT, Reader, is_abs_path, is_int

MODES: Final = ("off", "acme", "files")
URL_RE: Final = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[^\s'\"\\;{}$]*)?$")
HOST_PORT_RE: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5}$")
EMAIL_RE: Final = re.compile(r"^[^\s@'\"\\;{}$]+@[A-Za-z0-9.-]+$")
NGINX_PATH_RE: Final = re.compile(r"^/[^\s;{}'\"$\\]*$")


@dataclass(frozen=True)
class TlsSettings:
    """The TLS settings.

    Attributes:
        mode: ``off``, ``acme`` or ``files``.
        server_names: names on the certificate and the public servers' ``server_name``; the
            first names certbot's lineage. Empty: the host of ``matrix_synapse_public_baseurl``,
            else ``matrix_domain`` (resolved in ``deploys.core.tls``).
        listen_addresses: addresses the public servers (HTTP, HTTPS, federation) listen on.
        https_port, http_port: the client/federation TLS port and the plain port that answers
            ACME challenges and redirects everything else.
        federation_port: the extra federation TLS port, or None for none.
        certificate_path, key_path: what nginx serves. ``files``: yours, which must exist;
            ``acme``: where the deploy keeps certbot's current certificate (certbot's deploy hook
            copies it there and reloads nginx).
        acme_directory_url: the ACME directory (Let's Encrypt's by default; a private one works).
        acme_email: the ACME account's contact, or None to register without one.
        acme_ca_bundle: CA bundle certbot trusts for the ACME directory (a private ACME server),
            or None for the system's.
        acme_webroot: where certbot puts HTTP-01 tokens for nginx to serve.
        expose_admin_api: serve ``/_synapse/admin`` on the public servers (else 404).
        expose_metrics: serve main's ``/_synapse/metrics`` on the public servers (else 404).
        well_known_enabled: serve ``/.well-known/matrix/{server,client}`` on the public servers
            when ``matrix_domain`` is not the name they serve (delegation).
        well_known_server: ``m.server`` (``host:port``), or None for the first served name and
            the HTTPS port.
        well_known_client_base_url: ``m.homeserver.base_url``, or None for public_baseurl, else
            ``https://`` and the first served name.
    """

    mode: str
    server_names: tuple[str, ...]
    listen_addresses: tuple[str, ...]
    https_port: int
    http_port: int
    federation_port: int | None
    certificate_path: str
    key_path: str
    acme_directory_url: str
    acme_email: str | None
    acme_ca_bundle: str | None
    acme_webroot: str
    expose_admin_api: bool
    expose_metrics: bool
    well_known_enabled: bool
    well_known_server: str | None
    well_known_client_base_url: str | None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def read(r: Reader) -> TlsSettings:
    def nginx_path(key: str) -> str:
        return r.check(
            key,
            lambda v: is_abs_path(v) and bool(NGINX_PATH_RE.match(v)),
            "allowed: an absolute path without spaces or ;{}'\"$\\",
        )

    def optional_path(key: str) -> str | None:
        return r.check(
            key,
            lambda v: v is None or (is_abs_path(v) and bool(NGINX_PATH_RE.match(v))),
            "allowed: None or an absolute path without spaces or ;{}'\"$\\",
        )

    def names(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and all(
            isinstance(n, str) and SERVER_NAME_RE.match(n) and not n.startswith("*.") for n in v
        )

    federation_port = r.check(
        "matrix_synapse_tls_federation_port",
        lambda v: v is None or (is_int(v) and 1 <= v <= HIGHEST_PORT),
        "allowed: a port, or None for no separate federation port",
    )
    return TlsSettings(
        mode=r.check("matrix_synapse_tls_mode", lambda v: v in MODES, f"allowed: {MODES}"),
        server_names=tuple(
            r.check(
                "matrix_synapse_tls_server_names",
                names,
                "allowed: a list of host names such as ['matrix.example.org'] (no wildcards: "
                "HTTP-01 cannot prove them); [] uses public_baseurl's host, else matrix_domain",
            )
        ),
        listen_addresses=r.addresses("matrix_synapse_tls_listen_addresses"),
        https_port=r.integer("matrix_synapse_tls_https_port", 1, HIGHEST_PORT),
        http_port=r.integer("matrix_synapse_tls_http_port", 1, HIGHEST_PORT),
        federation_port=federation_port,
        certificate_path=nginx_path("matrix_synapse_tls_certificate_path"),
        key_path=nginx_path("matrix_synapse_tls_key_path"),
        acme_directory_url=r.text(
            "matrix_synapse_tls_acme_directory_url",
            URL_RE,
            "allowed: an http(s) URL such as 'https://acme.example.org/directory'",
        ),
        acme_email=r.check(
            "matrix_synapse_tls_acme_email",
            lambda v: v is None or (isinstance(v, str) and bool(EMAIL_RE.match(v))),
            "allowed: None or an email address such as 'admin@example.org'",
        ),
        acme_ca_bundle=optional_path("matrix_synapse_tls_acme_ca_bundle"),
        acme_webroot=nginx_path("matrix_synapse_tls_acme_webroot"),
        expose_admin_api=r.boolean("matrix_synapse_tls_expose_admin_api"),
        expose_metrics=r.boolean("matrix_synapse_tls_expose_metrics"),
        well_known_enabled=r.boolean("matrix_synapse_well_known_enabled"),
        well_known_server=r.check(
            "matrix_synapse_well_known_server",
            lambda v: v is None or (isinstance(v, str) and bool(HOST_PORT_RE.match(v))),
            "allowed: None or host:port such as 'matrix.example.org:8443'",
        ),
        well_known_client_base_url=r.check(
            "matrix_synapse_well_known_client_base_url",
            lambda v: v is None or (isinstance(v, str) and bool(URL_RE.match(v))),
            "allowed: None or an http(s) URL such as 'https://matrix.example.org'",
        ),
    )
