"""A private ACME server on the bridge network: pebble issues a certificate to another test host
through certbot's HTTP-01 webroot challenge, validated for real (tests/support/pebble.py).

Run: .venv/bin/pytest tests/integration/test_acme.py -v
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

import pytest

from tests.support.pebble import Pebble, ensure_acme_tree, start_pebble, trust_pebble
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

Factory = Callable[..., list[TestHost]]
LIVE = "/etc/letsencrypt/live"
TLS_SITE = """server {
    listen 443 ssl;
    server_name hs-b.test;
    ssl_certificate /etc/letsencrypt/live/hs-b.test/fullchain.pem;
    ssl_certificate_key /etc/letsencrypt/live/hs-b.test/privkey.pem;
    location / { return 200 "tls-ok\\n"; }
}
"""


@pytest.fixture
def acme_pair(bridged_testhosts: Factory) -> tuple[Pebble, TestHost]:
    """pebble on acme.test; hs-b.test with nginx (serving /var/www/html) and certbot."""
    tree = ensure_acme_tree()
    acme, web = bridged_testhosts(2, names=["acme.test", "hs-b.test"], tree=tree)
    return start_pebble(acme), web


def _certbot(web: TestHost, pebble: Pebble, domain: str) -> tuple[int, str]:
    ca = trust_pebble(web, pebble)
    proc = web.ssh(
        f"REQUESTS_CA_BUNDLE={ca} certbot certonly --webroot -w /var/www/html -d {domain} "
        f"--server {pebble.directory_url} --non-interactive --agree-tos "
        f"-m admin@{domain} --no-eff-email",
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_certbot_gets_a_certificate_from_pebble_over_http01(
    acme_pair: tuple[Pebble, TestHost],
) -> None:
    pebble, web = acme_pair
    rc, output = _certbot(web, pebble, "hs-b.test")
    assert rc == 0, output
    cert = web.ssh(
        f"openssl x509 -in {LIVE}/hs-b.test/cert.pem -noout -subject -issuer -ext subjectAltName"
    ).stdout
    assert "subject=CN = hs-b.test" in cert
    assert "issuer=CN = Pebble Intermediate CA" in cert
    assert "DNS:hs-b.test" in cert
    # The chain leads to pebble's root of this run (fetched from its management API).
    web.ssh("cat > /tmp/pebble-root.pem", input=pebble.issuer_roots())
    verify = web.ssh(
        f"openssl verify -CAfile /tmp/pebble-root.pem -untrusted {LIVE}/hs-b.test/chain.pem "
        f"{LIVE}/hs-b.test/cert.pem"
    )
    assert verify.stdout.strip().endswith(": OK")
    assert web.ssh(f"stat -L -c %a {LIVE}/hs-b.test/privkey.pem").stdout.strip() == "600"
    # Validation was real: pebble fetched the token from this nginx, over the bridge, by name.
    access = web.ssh("cat /var/log/nginx/access.log").stdout.splitlines()
    challenges = [line for line in access if "/.well-known/acme-challenge/" in line]
    assert challenges, access
    assert all(line.startswith(f"{pebble.host.address} ") for line in challenges)
    assert all('" 200 ' in line and "Pebble-VA" in line for line in challenges)
    # nginx serves the certificate on 443, and a client trusting only pebble's root accepts it.
    web.ssh("cat > /etc/nginx/sites-enabled/tls && nginx -t -q && nginx -s reload", input=TLS_SITE)
    fetch = (
        "import ssl, urllib.request; "
        "ctx = ssl.create_default_context(cafile='/tmp/pebble-root.pem'); "
        "print(urllib.request.urlopen('https://hs-b.test/', context=ctx).read().decode())"
    )
    pebble.host.ssh("cat > /tmp/pebble-root.pem", input=pebble.issuer_roots())
    for _ in range(50):  # the reload is asynchronous: the old workers may answer a moment longer
        reply = pebble.host.ssh(f"python3 -c {shlex.quote(fetch)}", check=False)
        if reply.returncode == 0:
            break
    assert reply.stdout.strip() == "tls-ok", reply.stderr


def test_pebble_refuses_what_it_cannot_validate(acme_pair: tuple[Pebble, TestHost]) -> None:
    pebble, web = acme_pair
    # A name the network's name server does not know.
    rc, output = _certbot(web, pebble, "nowhere.test")
    assert rc != 0
    assert 'could not resolve URL "http://nowhere.test:80/' in output, output
    # The right name, but nothing serves the token: nginx is stopped.
    web.ssh("systemctl stop nginx")
    rc, output = _certbot(web, pebble, "hs-b.test")
    assert rc != 0
    assert "connection refused" in output.lower(), output
    assert web.ssh(f"test -e {LIVE}/hs-b.test", check=False).returncode == 1
