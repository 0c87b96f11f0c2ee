"""Component deploys: the certificate of nginx's public TLS servers (``deploys.core.tls``)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from deploys.core.settings import Settings
from deploys.core.tls import acme_script, certificate_names, deploy_hook, lineage
from deploys.facts.tls import TlsCertificates
from deploys.operations.tls import acme_certificate


@deploy("TLS certificate before nginx loads it")
def tls_certificate(settings: Settings) -> None:
    """
    ``files``: refuse a certificate or key that is not there, naming the setting, before anything
    changes. ``acme``: certbot's certificate for the public names at the served paths, before the
    nginx file that serves them changes (``deploys.core.tls``); renewals are certbot's timer's.

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
    acme_certificate(
        name=f"Certificate for {', '.join(names)} from {tls.acme_directory_url}",
        certificate_path=tls.certificate_path,
        key_path=tls.key_path,
        names=names,
        directory_url=tls.acme_directory_url,
        deploy_hook=deploy_hook(tls),
        lineage=lineage(names),
        acme_script=lambda refused, unreachable: acme_script(settings, names, refused, unreachable),
    )
