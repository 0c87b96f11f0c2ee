"""Operations: the certificate nginx's public servers serve (``deploys.core.tls``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation

from deploys.facts.tls import TlsCertificates


@operation()
def acme_certificate(
    certificate_path: str,
    key_path: str,
    names: Sequence[str],
    directory_url: str,
    deploy_hook: str,
    lineage: str,
    acme_script: Callable[[str, str], str],
):
    """
    Have certbot's certificate for ``names`` from ``directory_url`` at the served paths, before
    the run changes nginx: run certbot (``deploys.core.tls.acme_script``: a temporary port-80
    challenge server beside nginx's current config) when there is no lineage yet, or its names,
    ACME server or saved deploy hook (the served paths) changed; run only the deploy hook when
    the lineage is right but something else is served. Renewals are certbot's own timer's. A
    failure names the setting to look at and leaves nginx's config and certificate as they were.

    + certificate_path: the certificate nginx serves
    + key_path: its key
    + names: the names the certificate must cover (the first is the lineage's name)
    + directory_url: the ACME directory (``matrix_synapse_tls_acme_directory_url``)
    + deploy_hook: ``deploys.core.tls.deploy_hook`` (also saved by certbot for renewals)
    + lineage: certbot's certificate name (``deploys.core.tls.lineage``)
    + acme_script: ``(refused, unreachable) -> script``, the messages it prints on failure

    **Example:**

    .. code:: python

        acme_certificate(
            name="Certificate from ACME",
            certificate_path=tls.certificate_path, key_path=tls.key_path, names=names,
            directory_url=tls.acme_directory_url, deploy_hook=deploy_hook(tls),
            lineage=lineage(names),
            acme_script=lambda refused, unreachable: acme_script(settings, names, refused,
                                                                 unreachable),
        )
    """
    found = host.get_fact(
        TlsCertificates, certificate_path=certificate_path, key_path=key_path, lineage=lineage
    )
    wanted = tuple(sorted(names))
    same = (found.lineage_server, found.lineage_names, found.lineage_hook)
    if same == (directory_url, wanted, deploy_hook):
        if found.lineage_fingerprint and found.served_fingerprint == found.lineage_fingerprint:
            host.noop(f"certbot's certificate for {', '.join(names)} is served")
            return
        live = f"/etc/letsencrypt/live/{lineage}"
        yield StringCommand("RENEWED_LINEAGE=" + live, "sh", "-c", QuoteString(deploy_hook))
        return
    if found.lineage_server is None and found.served_fingerprint:
        # Never replace a certificate we did not put there.
        raise OperationError(
            f"{certificate_path} holds a certificate that is not certbot's: move it away, or use "
            "matrix_synapse_tls_mode = 'files'"
        )
    kept = "nginx's config and the served certificate were left as they were"
    unreachable = (
        f"matrix_synapse_tls_acme_directory_url = {directory_url!r}: certbot could not get a "
        f"certificate for {', '.join(names)} from it (certbot's output is above); {kept}"
    )
    refused = (
        f"matrix_synapse_tls_server_names ({', '.join(names)}): the ACME server could not "
        "validate every name: each must resolve to this host and reach its port 80 "
        f"(matrix_synapse_tls_http_port) from the ACME server (certbot's output is above); {kept}"
    )
    yield StringCommand("sh", "-c", QuoteString(acme_script(refused, unreachable)))
