"""A private ACME server for tests: Debian's ``pebble`` (Let's Encrypt's test CA) on a bridged
test host, validating for real over the harness's bridge network and name server.

Usage (see tests/integration/test_acme.py)::

    acme, web = bridged_testhosts(2, names=["acme.test", "hs-b.test"], tree=ensure_acme_tree())
    pebble = start_pebble(acme)                     # https://acme.test:14000/dir
    trust_pebble(web, pebble)                       # certbot (requests) trusts pebble's API
    web.ssh(f"certbot certonly --webroot -w /var/www/html -d hs-b.test "
            f"--server {pebble.directory_url} ...")
    pebble.issuer_roots()                           # PEM of the CA that signed the certificate

Pebble resolves the names it validates through ``-dnsserver`` = the network's name server, and
fetches ``http://<name>:80/.well-known/acme-challenge/<token>`` from the host that name points at.
``PEBBLE_VA_NOSLEEP=1`` only skips pebble's random pause before validating;
``PEBBLE_VA_ALWAYS_VALID`` is never set, so a name that does not serve the token is refused.
``PEBBLE_AUTHZREUSE=0`` makes every order validate again (pebble reuses a valid authorization
half of the time by default, so a renewal could pass without the challenge being served).
``PEBBLE_WFE_NONCEREJECT=0`` turns off pebble's deliberate rejection of 5 % of nonces, which
would make runs flaky without testing anything of ours.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.support.testhost import TestHost, ensure_derived_tree

ACME_PACKAGES = ("pebble", "openssl", "certbot", "python3-certbot-nginx")
ACME_PORT = 14000
MANAGEMENT_PORT = 15000
PEBBLE_DIR = "/etc/pebble"
# Where clients keep the CA of pebble's own HTTPS listener (REQUESTS_CA_BUNDLE for certbot).
CLIENT_CA_PATH = "/usr/local/share/ca-certificates/pebble-api-ca.crt"


def ensure_acme_tree(base: Path | None = None) -> Path:
    """A tree with pebble, openssl, certbot and its nginx plugin (base: the base tree)."""
    commands = [
        "apt-get update -q",
        f"apt-get install -y -q --no-install-recommends {' '.join(ACME_PACKAGES)}",
        # certbot's own renewal timer would only log failures on a guest without its CA trust.
        "systemctl mask certbot.timer",
    ]
    return ensure_derived_tree("acme", commands, version="1", base=base)


@dataclass
class Pebble:
    host: TestHost
    name: str  # the DNS name its HTTPS listener has a certificate for
    ca_pem: str  # the CA of that listener (not of the certificates pebble issues)

    @property
    def directory_url(self) -> str:
        return f"https://{self.name}:{ACME_PORT}/dir"

    def issuer_roots(self) -> str:
        """PEM of pebble's current root (random per start): what issued certificates chain to."""
        return self._management_get("/roots/0")

    def intermediate(self) -> str:
        return self._management_get("/intermediates/0")

    def _management_get(self, path: str) -> str:
        script = (
            "import ssl, sys, urllib.request; "
            f"ctx = ssl.create_default_context(cafile='{PEBBLE_DIR}/ca.pem'); "
            f"sys.stdout.write(urllib.request.urlopen('https://{self.name}:{MANAGEMENT_PORT}"
            f"{path}', context=ctx).read().decode())"
        )
        return self.host.ssh(f"python3 -c {shlex.quote(script)}").stdout


def start_pebble(host: TestHost, name: str | None = None) -> Pebble:
    """Run pebble on `host` (booted from `ensure_acme_tree`, on a bridge network) as a unit.

    `name` (default: the host's first alias, else its machine name) must resolve to `host`; its
    HTTPS listener gets a certificate for it from a CA made here, returned as ``ca_pem``.
    """
    if host.network is None:
        raise ValueError(f"{host.name} is not on a bridge network: pebble could not validate")
    name = name or (host.aliases[0] if host.aliases else host.name)
    config = {
        "pebble": {
            "listenAddress": f"0.0.0.0:{ACME_PORT}",
            "managementListenAddress": f"0.0.0.0:{MANAGEMENT_PORT}",
            "certificate": f"{PEBBLE_DIR}/cert.pem",
            "privateKey": f"{PEBBLE_DIR}/key.pem",
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    host.ssh(
        f"set -e; mkdir -p {PEBBLE_DIR}; cd {PEBBLE_DIR}; "
        f"openssl req -x509 {ec} -keyout ca.key -out ca.pem -days 30 "
        "-subj '/CN=pyinfra-synapse test ACME API CA' 2>/dev/null; "
        f"openssl req {ec} -keyout key.pem -out cert.csr -subj '/CN={name}' 2>/dev/null; "
        f"printf 'subjectAltName=DNS:{name},DNS:{host.name},IP:{host.address}\\n' > ext.cnf; "
        "openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 "
        "-extfile ext.cnf -out cert.pem 2>/dev/null; "
        f"cat > pebble.json <<'EOF'\n{json.dumps(config, indent=2)}\nEOF\n"
        "systemd-run --unit=pebble -p Type=exec "
        "--setenv=PEBBLE_VA_NOSLEEP=1 --setenv=PEBBLE_WFE_NONCEREJECT=0 "
        "--setenv=PEBBLE_AUTHZREUSE=0 "
        f"pebble -config {PEBBLE_DIR}/pebble.json -dnsserver {host.network.dns_address}:53; "
        f"for i in $(seq 100); do ss -Htln 'sport = {ACME_PORT}' | grep -q . && exit 0; "
        "sleep 0.1; done; journalctl -u pebble --no-pager | tail -20; exit 1"
    )
    pebble = Pebble(host, name, host.ssh(f"cat {PEBBLE_DIR}/ca.pem").stdout)
    return pebble


def trust_pebble(client: TestHost, pebble: Pebble) -> str:
    """Put the CA of pebble's API on `client`; returns the path (for REQUESTS_CA_BUNDLE)."""
    client.ssh(f"install -D -m 644 /dev/stdin {CLIENT_CA_PATH}", input=pebble.ca_pem)
    return CLIENT_CA_PATH
