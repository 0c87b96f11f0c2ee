"""Component deploys: the certificate of nginx's public TLS servers (``deploys.core.tls``)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from deploys.core.settings import Settings
from deploys.core.tls import (
    certbot_command,
    certificate_names,
    deploy_hook,
    lineage,
    placeholder_command,
)
from deploys.facts.tls import TlsCertificates
from deploys.operations.tls import acme_certificate, placeholder_certificate


@deploy("TLS certificate before nginx loads it")
def tls_before_nginx(settings: Settings) -> None:
    """
    ``files``: refuse a certificate or key that is not there, naming the setting, before anything
    changes. ``acme``: a self-signed placeholder if nothing is served yet, so the nginx file with
    the public servers passes ``nginx -t`` and port 80 can answer the first challenge.

    + settings: validated settings (TLS not ``off``)
    """
    tls = settings.tls
    names = certificate_names(settings)
    if tls.mode == "files":
        found = host.get_fact(
            TlsCertificates,
            certificate_path=tls.certificate_path,
            key_path=tls.key_path,
            lineage="",
        )
        missing = []
        if not found.served_fingerprint:
            missing.append(
                f"matrix_synapse_tls_certificate_path = {tls.certificate_path!r}: no readable "
                "certificate there"
            )
        if not found.key_present:
            missing.append(f"matrix_synapse_tls_key_path = {tls.key_path!r}: no key there")
        if missing:
            raise PyinfraError(f"{host.name}: " + "; ".join(missing))
        return
    placeholder_certificate(
        name="Placeholder certificate until ACME has issued one",
        certificate_path=tls.certificate_path,
        key_path=tls.key_path,
        lineage=lineage(names),
        command=placeholder_command(tls, names),
    )


@deploy("TLS certificate from ACME")
def tls_after_nginx(settings: Settings) -> None:
    """
    ``acme``: certbot's certificate for the public names, through nginx's port-80 server (so it
    runs after the nginx file is in place); renewals are certbot's own timer's.

    + settings: validated settings (TLS mode ``acme``)
    """
    tls = settings.tls
    names = certificate_names(settings)
    acme_certificate(
        name=f"Certificate for {', '.join(names)} from {tls.acme_directory_url}",
        certificate_path=tls.certificate_path,
        key_path=tls.key_path,
        names=names,
        directory_url=tls.acme_directory_url,
        certbot_command=certbot_command(tls, names),
        deploy_hook=deploy_hook(tls),
        lineage=lineage(names),
    )
