"""Operations: the certificate nginx's public servers serve (``deploys.core.tls``)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import OperationError, QuoteString, StringCommand, operation

from deploys.facts.tls import TlsCertificates


@operation()
def placeholder_certificate(certificate_path: str, key_path: str, lineage: str, command: str):
    """
    Put a self-signed placeholder where nginx expects the certificate, only if there is none yet,
    so nginx can load its public servers (and answer the first ACME challenge) before ACME has
    issued anything. Never replaces an existing certificate.

    + certificate_path: the certificate nginx serves
    + key_path: its key
    + lineage: certbot's certificate name (read with the same fact as ``acme_certificate``)
    + command: the placeholder command (``deploys.core.tls.placeholder_command``)

    **Example:**

    .. code:: python

        placeholder_certificate(
            name="Placeholder certificate until ACME answers",
            certificate_path="/etc/nginx/tls/fullchain.pem", key_path="/etc/nginx/tls/privkey.pem",
            lineage="matrix.example.org", command=placeholder_command(tls, names),
        )
    """
    found = host.get_fact(
        TlsCertificates, certificate_path=certificate_path, key_path=key_path, lineage=lineage
    )
    if found.served_fingerprint and found.key_present:
        host.noop(f"a certificate is at {certificate_path}")
        return
    yield StringCommand("sh", "-c", QuoteString(command))


@operation()
def acme_certificate(
    certificate_path: str,
    key_path: str,
    names: Sequence[str],
    directory_url: str,
    certbot_command: str,
    deploy_hook: str,
    lineage: str,
):
    """
    Have certbot's certificate for ``names`` from ``directory_url`` served: run
    ``certbot certonly --webroot`` when there is no lineage yet, or its names or ACME server
    changed, or its saved deploy hook is not this one (e.g. the served paths moved; the hook
    copies the result to the served paths and reloads nginx); run only
    the deploy hook when the lineage is right but something else is served (e.g. the
    placeholder). Renewals are certbot's own timer's. A failure names the directory setting and
    leaves the served certificate and nginx as they were.

    + certificate_path: the certificate nginx serves
    + key_path: its key
    + names: the names the certificate must cover (the first is the lineage's name)
    + directory_url: the ACME directory (``matrix_synapse_tls_acme_directory_url``)
    + certbot_command: ``deploys.core.tls.certbot_command``
    + deploy_hook: ``deploys.core.tls.deploy_hook`` (also saved by certbot for renewals)
    + lineage: certbot's certificate name (``deploys.core.tls.lineage``)

    **Example:**

    .. code:: python

        acme_certificate(
            name="Certificate from ACME",
            certificate_path=tls.certificate_path, key_path=tls.key_path, names=names,
            directory_url=tls.acme_directory_url, certbot_command=certbot_command(tls, names),
            deploy_hook=deploy_hook(tls), lineage=lineage(names),
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
    if found.lineage_server is None and found.served_fingerprint and not found.served_placeholder:
        # Never replace a certificate we did not put there.
        raise OperationError(
            f"{certificate_path} holds a certificate that is neither certbot's nor the deploy's "
            "placeholder: move it away, or use matrix_synapse_tls_mode = 'files'"
        )
    kept = "the served certificate was left as it was"
    unreachable = (
        f"matrix_synapse_tls_acme_directory_url = {directory_url!r}: certbot could not get a "
        f"certificate for {', '.join(names)} from it (certbot's output is above); {kept}"
    )
    refused = (
        f"matrix_synapse_tls_server_names ({', '.join(names)}): the ACME server could not "
        "validate every name: each must resolve to this host and reach its port 80 "
        f"(matrix_synapse_tls_http_port) from the ACME server (certbot's output is above); {kept}"
    )
    # certbot says "failed to authenticate" when the ACME server answered but a name failed.
    script = (
        f"out=$({certbot_command} 2>&1); rc=$?; printf '%s\\n' \"$out\"; "
        '[ "$rc" -eq 0 ] && exit 0; '
        'if printf \'%s\' "$out" | grep -q "failed to authenticate"; '
        f"then echo {shlex.quote(refused)} >&2; else echo {shlex.quote(unreachable)} >&2; fi; "
        "exit 1"
    )
    yield StringCommand("sh", "-c", QuoteString(script))
