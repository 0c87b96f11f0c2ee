"""Public TLS: nginx's HTTPS and port-80 servers, and the certbot commands that feed them (pure).

The HTTPS servers (``https_port`` and, if set, the federation port) carry the same routing
locations as the plain loopback server (the template renders them from one macro), plus:

- ``/_synapse/admin`` and ``/_synapse/metrics`` answer 404 unless exposed by a setting (the
  metrics then come from main's metrics listener);
- ``X-Forwarded-Proto: https`` to Synapse.

- ``/.well-known/matrix/server`` and ``/client`` (delegation) when ``matrix_domain`` is not
  the name served.

The port-80 server answers ACME HTTP-01 challenges from the webroot (``acme`` mode) and redirects
everything else to HTTPS.

Certificates, ``acme`` mode: nginx serves ``certificate_path``/``key_path``. certbot runs
(``certonly --webroot``) before the run changes nginx's files, with a temporary port-80 server
for the names beside nginx's current config, so a failure (a directory that does not answer, a
name that cannot be validated) leaves nginx's config and certificate as they were. Its deploy hook
copies the certificate to the served paths and reloads nginx; certbot stores that hook in the
lineage's renewal config, so its own timer's renewals do the same (through the permanent port-80
server): copy, reload, never a restart of nginx or Synapse.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlparse

from deploys.core.processes import connect_address
from deploys.core.settings import Settings, TlsSettings

# A port-80 server answering ACME challenges while certbot runs, before the run's nginx file.
CHALLENGE_SNIPPET: Final = "pyinfra-synapse-acme-challenge.conf"
LETSENCRYPT_DIR: Final = "/etc/letsencrypt"
ADMIN_PREFIX: Final = "/_synapse/admin"
METRICS_PREFIX: Final = "/_synapse/metrics"
CERTBOT_DROPIN: Final = "50-pyinfra-synapse-acme.conf"


@dataclass(frozen=True)
class TlsServers:
    """What the nginx template needs for the public servers.

    Attributes:
        https_listen: ``listen`` values of the TLS server (``addr:port ssl``).
        http_listen: ``listen`` values of the port-80 server.
        server_name: its ``server_name``.
        certificate, key: the files nginx serves.
        acme_webroot: the HTTP-01 webroot, or None (``files`` mode: no challenge location).
        expose_admin_api: route ``/_synapse/admin`` like the plain server (else 404).
        metrics_upstream: ``host:port`` of main's metrics listener if exposed, else None (404).
        well_known: ``(path, nginx-quoted JSON)`` of each delegation file served, if any.
    """

    https_listen: tuple[str, ...]
    http_listen: tuple[str, ...]
    server_name: str
    certificate: str
    key: str
    acme_webroot: str | None
    expose_admin_api: bool
    metrics_upstream: str | None
    well_known: tuple[tuple[str, str], ...] = ()


def certificate_names(settings: Settings) -> tuple[str, ...]:
    """The certificate's names: the setting, else public_baseurl's host, else the domain."""
    if settings.tls.server_names:
        return settings.tls.server_names
    if settings.public_baseurl:
        host = urlparse(settings.public_baseurl).hostname
        if host:
            return (host,)
    return (settings.domain,)


def tls_servers(settings: Settings) -> TlsServers | None:
    """The public servers' model, or None when TLS is off."""
    tls = settings.tls
    if not tls.enabled:
        return None
    ports = [tls.https_port] + ([tls.federation_port] if tls.federation_port else [])
    metrics = None
    if tls.expose_metrics and settings.metrics_enabled:
        metrics = (
            f"{_host(connect_address(settings.metrics_bind_addresses))}:{settings.metrics_port}"
        )
    return TlsServers(
        https_listen=tuple(
            f"{_host(a)}:{port} ssl" for port in ports for a in tls.listen_addresses
        ),
        http_listen=tuple(f"{_host(a)}:{tls.http_port}" for a in tls.listen_addresses),
        server_name=" ".join(certificate_names(settings)),
        certificate=tls.certificate_path,
        key=tls.key_path,
        acme_webroot=tls.acme_webroot if tls.mode == "acme" else None,
        expose_admin_api=tls.expose_admin_api,
        metrics_upstream=metrics,
        well_known=tuple(
            (f"/.well-known/matrix/{name}", _nginx_quote(json.dumps(body)))
            for name, body in well_known(settings).items()
        ),
    )


def well_known(settings: Settings) -> dict[str, dict[str, Any]]:
    """The delegation files (``server``, ``client``) when matrix_domain is not the served name."""
    tls = settings.tls
    served = certificate_names(settings)[0]
    if not (tls.enabled and tls.well_known_enabled) or served == settings.domain:
        return {}
    base_url = tls.well_known_client_base_url or (settings.public_baseurl or f"https://{served}")
    return {
        "server": {"m.server": tls.well_known_server or f"{served}:{tls.https_port}"},
        "client": {"m.homeserver": {"base_url": base_url.rstrip("/")}},
    }


def certbot_dropin(settings: Settings) -> str | None:
    """A drop-in for ``certbot.service`` (what certbot's timer runs) with the CA bundle of a
    private ACME server, or None when certbot trusts the system's CAs."""
    tls = settings.tls
    if tls.mode != "acme" or not tls.acme_ca_bundle:
        return None
    return (
        "# Managed by pyinfra-synapse (matrix_synapse_tls_acme_ca_bundle): renewals trust the\n"
        "# private ACME server as the deploy's certbot run does.\n"
        f"[Service]\nEnvironment=REQUESTS_CA_BUNDLE={tls.acme_ca_bundle}\n"
    )


def lineage(names: tuple[str, ...]) -> str:
    """certbot's certificate name (``/etc/letsencrypt/live/<lineage>``): the first name."""
    return names[0]


def renewal_config(names: tuple[str, ...]) -> str:
    return posixpath.join(LETSENCRYPT_DIR, "renewal", f"{lineage(names)}.conf")


def deploy_hook(tls: TlsSettings) -> str:
    """What certbot runs after each issuance and renewal: copy the lineage over the files nginx
    serves (key 0600, written to a temporary name first) and reload nginx (never restart)."""
    cert, key = shlex.quote(tls.certificate_path), shlex.quote(tls.key_path)
    return (
        f'install -D -m 0640 "$RENEWED_LINEAGE/fullchain.pem" {cert}.new && '
        f'install -D -m 0600 "$RENEWED_LINEAGE/privkey.pem" {key}.new && '
        f"mv -f {key}.new {key} && mv -f {cert}.new {cert} && "
        "systemctl reload nginx"
    )


def challenge_server(settings: Settings, names: tuple[str, ...]) -> str:
    """A port-80 ``server`` answering HTTP-01 for `names` from the webroot (404 otherwise)."""
    tls = settings.tls
    listen = "".join(f"    listen {_host(a)}:{tls.http_port};\n" for a in tls.listen_addresses)
    return (
        "# Managed by pyinfra-synapse: only while certbot runs (deploys/core/tls.py).\n"
        f"server {{\n{listen}    server_name {' '.join(names)};\n"
        "    location ^~ /.well-known/acme-challenge/ {\n"
        f"        root {tls.acme_webroot};\n        default_type text/plain;\n    }}\n"
        "    location / {\n        return 404;\n    }\n}\n"
    )


def acme_script(settings: Settings, names: tuple[str, ...], refused: str, unreachable: str) -> str:
    """certbot for `names` before the run changes nginx's files: a challenge server for the
    names (the new ones included) is added beside nginx's current config, certbot runs, the
    challenge server goes again. On failure nginx keeps its config and certificate, and the
    script says which setting to look at: `refused` (a name failed validation) or
    `unreachable` (anything else, e.g. the directory did not answer)."""
    conf_d = posixpath.dirname(settings.nginx.config_path)
    snippet = shlex.quote(posixpath.join(conf_d, CHALLENGE_SNIPPET))
    return (
        f"cat > {snippet} <<'EOF'\n{challenge_server(settings, names)}EOF\n"
        f"if ! nginx -t -q; then rm -f {snippet}; "
        "echo 'nginx refused the ACME challenge server' >&2; exit 1; fi\n"
        "systemctl reload-or-restart nginx\n"
        f"out=$({certbot_command(settings.tls, names)} 2>&1); rc=$?\n"
        f"rm -f {snippet}; nginx -t -q && systemctl reload nginx\n"
        "printf '%s\\n' \"$out\"\n"
        '[ "$rc" -eq 0 ] && exit 0\n'
        # certbot says "failed to authenticate" when the ACME server answered but a name failed.
        'if printf \'%s\' "$out" | grep -q "failed to authenticate"; '
        f"then echo {shlex.quote(refused)} >&2; else echo {shlex.quote(unreachable)} >&2; fi\n"
        "exit 1\n"
    )


def certbot_command(tls: TlsSettings, names: tuple[str, ...]) -> str:
    """``certbot certonly --webroot`` for `names`, its deploy hook saved for renewals."""
    args = [
        "certbot",
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--webroot",
        "--webroot-path",
        tls.acme_webroot,
        "--cert-name",
        lineage(names),
        "--server",
        tls.acme_directory_url,
        "--deploy-hook",
        deploy_hook(tls),
        # The deploy runs certbot only when the lineage must change (new names, directory or
        # hook): renew now, or certbot would keep an unexpired certificate and its old config.
        "--force-renewal",
    ]
    if tls.acme_email:
        args += ["--email", tls.acme_email, "--no-eff-email"]
    else:
        args.append("--register-unsafely-without-email")
    for name in names:
        args += ["-d", name]
    command = " ".join(shlex.quote(a) for a in args)
    env = f"REQUESTS_CA_BUNDLE={shlex.quote(tls.acme_ca_bundle)} " if tls.acme_ca_bundle else ""
    return f"mkdir -p {shlex.quote(tls.acme_webroot)} && {env}{command}"


def _nginx_quote(value: str) -> str:
    """``value`` as an nginx double-quoted string (nginx reads ``\\\\`` and ``\\"`` back)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
