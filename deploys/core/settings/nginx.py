"""nginx section (``matrix_synapse_nginx_*``): the server in front of main and every worker.

Every value goes into the nginx file verbatim, so each key is checked for what nginx would read
(no ``;``, braces, quotes or spaces where they would end a directive). Whether its port collides
with a Synapse listener is the plan's port check (``deploys.core.plan``): it is one more listener.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from deploys.core.settings.reader import HIGHEST_PORT, Reader, is_abs_path

SERVER_NAME_RE: Final = re.compile(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
SIZE_RE: Final = re.compile(r"^[0-9]+[kKmMgG]?$")
LOG_PATH_RE: Final = re.compile(r"^/[^\s;{}'\"$\\]*$")


@dataclass(frozen=True)
class NginxSettings:
    """The nginx settings.

    Attributes:
        enabled: render the routing file and reload nginx (checked with ``nginx -t`` first).
        config_path: where the routing file goes (a ``conf.d`` file in nginx's http context).
        listen_addresses: addresses the server listens on.
        listen_port: its port (plain HTTP; put TLS in front).
        server_names: ``server_name`` values; empty answers any Host.
        trusted_proxies: addresses or CIDRs of proxies in front of nginx whose
            ``X-Forwarded-For`` (and ``X-Forwarded-Proto``) nginx believes.
        client_max_body_size: largest request body (media uploads), nginx syntax.
        access_log: access log path, or None for none.
    """

    enabled: bool
    config_path: str
    listen_addresses: tuple[str, ...]
    listen_port: int
    server_names: tuple[str, ...]
    trusted_proxies: tuple[str, ...]
    client_max_body_size: str
    access_log: str | None


def read(r: Reader) -> NginxSettings:
    return NginxSettings(
        enabled=r.boolean("matrix_synapse_nginx_enabled"),
        config_path=r.path("matrix_synapse_nginx_config_path"),
        listen_addresses=r.addresses("matrix_synapse_nginx_listen_addresses"),
        listen_port=r.integer("matrix_synapse_nginx_listen_port", 1, HIGHEST_PORT),
        server_names=_strings(
            r,
            "matrix_synapse_nginx_server_names",
            lambda n: bool(SERVER_NAME_RE.match(n)),
            "allowed: host names such as 'matrix.example.org' ('*.' prefix allowed); "
            "[] answers any Host",
        ),
        trusted_proxies=_strings(
            r,
            "matrix_synapse_nginx_trusted_proxies",
            _is_network,
            "allowed: a list of IP addresses or CIDRs, e.g. ['10.0.0.0/8']",
        ),
        client_max_body_size=r.text(
            "matrix_synapse_nginx_client_max_body_size",
            SIZE_RE,
            "allowed: a size such as '100M' (digits, then k, m or g)",
        ),
        access_log=r.check(
            "matrix_synapse_nginx_access_log",
            lambda v: v is None or (is_abs_path(v) and bool(LOG_PATH_RE.match(v))),
            "allowed: None or an absolute path without spaces or ;{}'\"$\\",
        ),
    )


def _strings(r: Reader, key: str, ok: Callable[[str], bool], allowed: str) -> tuple[str, ...]:
    def every(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and all(isinstance(x, str) and ok(x) for x in v)

    return tuple(r.check(key, every, allowed))


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True
