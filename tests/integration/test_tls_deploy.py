"""The deploy's public TLS (matrix_synapse_tls_mode = "acme"): certbot gets the certificate from
pebble over HTTP-01 through the deploy's own nginx, nginx serves the same routing on 443 and
8448, the admin API and metrics stay off the public side unless a setting opens them, renewals
reload nginx only, and a rerun changes nothing. Stand-in Synapse; two bridged test hosts.

Run: .venv/bin/pytest tests/integration/test_tls_deploy.py -v
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    assert_no_changes,
    host_snapshot,
    install_standin,
    main_pids,
    pyinfra,
    write_inventory,
)
from tests.support.pebble import Pebble, ensure_acme_tree, start_pebble, trust_pebble
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

Factory = Callable[..., list[TestHost]]
CERT = "/etc/nginx/matrix-synapse-tls/fullchain.pem"
KEY = "/etc/nginx/matrix-synapse-tls/privkey.pem"
ROOT = "/tmp/pebble-root.pem"

# A GET from another machine of the bridge (no redirects followed), trusting pebble's root only.
FETCH = """
import json, ssl, sys, urllib.error, urllib.request
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
ctx = ssl.create_default_context(cafile=sys.argv[2])
opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=ctx))
try:
    r = opener.open(sys.argv[1], timeout=10)
    status, headers, body = r.status, r.headers, r.read().decode()
except urllib.error.HTTPError as e:
    status, headers, body = e.code, e.headers, e.read().decode()
print(json.dumps({"status": status, "upstream": headers.get("X-Synapse-Upstream"),
                  "location": headers.get("Location"), "body": body}))
"""


def fetch(client: TestHost, url: str) -> dict[str, Any]:
    out = client.ssh(f"python3 - {shlex.quote(url)} {ROOT}", input=FETCH).stdout
    return json.loads(out)


def served_fingerprint(host: TestHost) -> str:
    return host.ssh(f"openssl x509 -in {CERT} -noout -fingerprint -sha256").stdout.strip()


def nginx_files(host: TestHost) -> str:
    """Every nginx config file and its checksum (the challenge server must be gone too)."""
    return host.ssh("cd /etc/nginx && find . -type f | sort | xargs sha256sum").stdout


def challenges(host: TestHost, log: str, acme: TestHost) -> list[str]:
    """HTTP-01 requests in nginx's `log`, after checking each came from the ACME host."""
    lines = host.ssh(f"cat {log}").stdout.splitlines()
    found = [line for line in lines if "/.well-known/acme-challenge/" in line]
    assert all(line.startswith(f"{acme.address} ") for line in found), found
    return found


def nginx_master(host: TestHost) -> str:
    return host.ssh("cat /run/nginx.pid").stdout.strip()


@pytest.fixture
def pair(bridged_testhosts: Factory) -> tuple[Pebble, TestHost]:
    acme, web = bridged_testhosts(2, names=["acme.test", "hs-b.test"], tree=ensure_acme_tree())
    pebble = start_pebble(acme)
    install_standin(web)
    acme.ssh(f"cat > {ROOT}", input=pebble.issuer_roots())
    return pebble, web


def tls_data(pebble: Pebble, web: TestHost, **extra: Any) -> dict[str, Any]:
    return {
        "matrix_domain": "hs-b.test",
        "matrix_synapse_tls_mode": "acme",
        "matrix_synapse_tls_acme_directory_url": pebble.directory_url,
        "matrix_synapse_tls_acme_ca_bundle": trust_pebble(web, pebble),
        "matrix_synapse_tls_acme_email": "admin@hs-b.test",
        **extra,
    }


def deploy(tmp_path: Path, web: TestHost, data: dict[str, Any], *args: str):
    inventory = write_inventory(tmp_path / "inventory.py", [(web, data)])
    return pyinfra(tmp_path, inventory, *args)


def test_acme_certificate_served_with_the_same_routing(
    tmp_path: Path, pair: tuple[Pebble, TestHost]
) -> None:
    pebble, web = pair
    client = pebble.host
    data = tls_data(pebble, web)
    run = deploy(tmp_path, web, data, "-y")
    assert run.returncode == 0, run.output[-4000:]

    # pebble's certificate is served, key 0600, by name over the bridge.
    subject = web.ssh(f"openssl x509 -in {CERT} -noout -subject -issuer -ext subjectAltName")
    assert "issuer=CN = Pebble Intermediate CA" in subject.stdout, subject.stdout
    assert "DNS:hs-b.test" in subject.stdout
    assert web.ssh(f"stat -c '%a %U' {KEY} {CERT}").stdout.split() == ["600", "root", "640", "root"]
    for url in ("https://hs-b.test/_matrix/client/versions", "https://hs-b.test:8448/x"):
        reply = fetch(client, url)
        assert reply["status"] == 200, reply
        assert reply["upstream"] == "synapse_main"
        assert json.loads(reply["body"]) == {"standin": "main"}
    # Port 80 redirects (only ACME challenges are answered there).
    plain = fetch(client, "http://hs-b.test/_matrix/client/versions?x=1")
    assert plain["status"] == 301
    assert plain["location"] == "https://hs-b.test/_matrix/client/versions?x=1"
    # Admin API and metrics: 404 from nginx on the public side, Synapse's on loopback.
    for path in ("/_synapse/admin/v1/server_version", "/_synapse/metrics"):
        reply = fetch(client, f"https://hs-b.test{path}")
        assert (reply["status"], reply["upstream"]) == (404, None), reply
    local = web.ssh(
        "python3 -c \"import urllib.request as u; r = u.urlopen('http://127.0.0.1:8088"
        "/_synapse/admin/v1/server_version'); print(r.status, r.headers['X-Synapse-Upstream'])\""
    )
    assert local.stdout.split() == ["200", "synapse_main"]
    # The first challenge was served by nginx's temporary challenge server (nginx's default
    # log), to pebble, by name over the bridge.
    assert challenges(web, "/var/log/nginx/access.log", client)

    # A rerun changes nothing (its facts add commands; not counted here).
    assert_no_changes(deploy(tmp_path, web, data), web.name, commands=None)

    # Renewal: certbot's own renew (what its timer runs) copies the new certificate and reloads
    # nginx: same nginx master, same Synapse processes, a new certificate on the wire.
    before, master, pids = served_fingerprint(web), nginx_master(web), main_pids(web)
    renew = web.ssh(
        f"REQUESTS_CA_BUNDLE={data['matrix_synapse_tls_acme_ca_bundle']} "
        "certbot renew --force-renewal --non-interactive --no-random-sleep-on-renew",
        check=False,
    )
    assert renew.returncode == 0, renew.stdout + renew.stderr
    assert served_fingerprint(web) != before
    # ...its challenge answered by the deploy's own port-80 server (the routing file's log).
    assert challenges(web, "/var/log/nginx/matrix-synapse-workers.access.log", client)
    assert nginx_master(web) == master
    assert main_pids(web) == pids
    assert fetch(client, "https://hs-b.test/_matrix/client/versions")["status"] == 200
    assert_no_changes(deploy(tmp_path, web, data), web.name, commands=None)

    # certbot's own service (what its timer runs) trusts the private ACME server's CA as the
    # deploy does, through the deploy's drop-in; without the setting the drop-in goes.
    environment = "systemctl show -p Environment certbot.service"
    bundle = data["matrix_synapse_tls_acme_ca_bundle"]
    assert web.ssh(environment).stdout.strip() == f"Environment=REQUESTS_CA_BUNDLE={bundle}"
    system_cas = {**data, "matrix_synapse_tls_acme_ca_bundle": None}
    assert deploy(tmp_path, web, system_cas, "-y").returncode == 0
    assert web.ssh(environment).stdout.strip() == "Environment="
    assert web.ssh("ls /etc/systemd/system/certbot.service.d", check=False).stdout.strip() == ""
    assert served_fingerprint(web) != before  # the renewed certificate is still served


def test_moved_certificate_paths_get_a_new_hook_and_the_certificate(
    tmp_path: Path, pair: tuple[Pebble, TestHost]
) -> None:
    """Changing where nginx reads the certificate re-runs certbot, so the hook it saves for
    renewals copies to the new paths; the run after converges."""
    pebble, web = pair
    data = tls_data(pebble, web)
    assert deploy(tmp_path, web, data, "-y").returncode == 0
    moved = {
        **data,
        "matrix_synapse_tls_certificate_path": "/etc/nginx/tls2/fullchain.pem",
        "matrix_synapse_tls_key_path": "/etc/nginx/tls2/privkey.pem",
    }
    run = deploy(tmp_path, web, moved, "-y")
    assert run.returncode == 0, run.output[-4000:]
    hook = web.ssh("grep ^renew_hook /etc/letsencrypt/renewal/hs-b.test.conf").stdout
    assert "/etc/nginx/tls2/fullchain.pem" in hook and "/etc/nginx/matrix-synapse-tls" not in hook
    live = web.ssh("openssl x509 -in /etc/letsencrypt/live/hs-b.test/cert.pem -noout -serial")
    served = web.ssh("openssl x509 -in /etc/nginx/tls2/fullchain.pem -noout -serial")
    assert live.stdout == served.stdout
    assert fetch(pebble.host, "https://hs-b.test/_matrix/client/versions")["status"] == 200
    assert_no_changes(deploy(tmp_path, web, moved), web.name, commands=None)


def test_admin_api_and_metrics_opened_by_settings_and_delegation(
    tmp_path: Path, pair: tuple[Pebble, TestHost]
) -> None:
    pebble, web = pair
    data = tls_data(
        pebble,
        web,
        matrix_synapse_tls_expose_admin_api=True,
        matrix_synapse_tls_expose_metrics=True,
        matrix_synapse_tls_federation_port=None,
        # Delegation: the homeserver is b.test, served by hs-b.test.
        matrix_domain="b.test",
        matrix_synapse_tls_server_names=["hs-b.test"],
    )
    run = deploy(tmp_path, web, data, "-y")
    assert run.returncode == 0, run.output[-4000:]
    server = fetch(pebble.host, "https://hs-b.test/.well-known/matrix/server")
    assert (server["status"], server["upstream"]) == (200, None), server
    assert json.loads(server["body"]) == {"m.server": "hs-b.test:443"}
    client = fetch(pebble.host, "https://hs-b.test/.well-known/matrix/client")
    assert json.loads(client["body"]) == {"m.homeserver": {"base_url": "https://hs-b.test"}}
    admin = fetch(pebble.host, "https://hs-b.test/_synapse/admin/v1/server_version")
    assert (admin["status"], admin["upstream"]) == (200, "synapse_main"), admin
    metrics = fetch(pebble.host, "https://hs-b.test/_synapse/metrics")
    assert metrics["status"] == 200 and 'worker="main"' in metrics["body"], metrics
    # No federation port: nothing listens on 8448.
    assert web.ssh("ss -Htln 'sport = 8448'").stdout.strip() == ""


def test_acme_directory_that_does_not_answer_names_the_setting(
    tmp_path: Path, pair: tuple[Pebble, TestHost]
) -> None:
    pebble, web = pair
    data = tls_data(pebble, web)
    assert deploy(tmp_path, web, data, "-y").returncode == 0
    served, config = served_fingerprint(web), nginx_files(web)
    # A new name needs a new certificate, from a directory where nothing answers.
    bad = {
        **data,
        "matrix_synapse_tls_server_names": ["hs-b.test", "hs-b2.test"],
        "matrix_synapse_tls_acme_directory_url": "https://acme.test:14999/dir",
    }
    run = deploy(tmp_path, web, bad, "-y")
    assert run.returncode != 0
    assert "matrix_synapse_tls_acme_directory_url = 'https://acme.test:14999/dir'" in run.output
    # The certificate and nginx's config from before are still what nginx serves.
    assert served_fingerprint(web) == served
    assert nginx_files(web) == config
    assert fetch(pebble.host, "https://hs-b.test/_matrix/client/versions")["status"] == 200


def test_a_name_the_acme_server_cannot_validate_names_the_setting(
    tmp_path: Path, pair: tuple[Pebble, TestHost]
) -> None:
    pebble, web = pair
    data = tls_data(pebble, web)
    assert deploy(tmp_path, web, data, "-y").returncode == 0
    served, config = served_fingerprint(web), nginx_files(web)
    bad = {**data, "matrix_synapse_tls_server_names": ["hs-b.test", "nowhere.test"]}
    run = deploy(tmp_path, web, bad, "-y")
    assert run.returncode != 0
    assert "matrix_synapse_tls_server_names (hs-b.test, nowhere.test)" in run.output, run.output
    assert served_fingerprint(web) == served
    assert nginx_files(web) == config
    assert fetch(pebble.host, "https://hs-b.test/_matrix/client/versions")["status"] == 200


def test_files_mode_serves_the_operators_certificate(
    tmp_path: Path, bridged_testhosts: Factory
) -> None:
    (web,) = bridged_testhosts(1, names=["hs-b.test"], tree=ensure_acme_tree())
    install_standin(web)
    web.ssh(
        "mkdir -p /root/tls && cd /root/tls && openssl req -x509 -newkey ec "
        "-pkeyopt ec_paramgen_curve:P-256 -nodes -days 5 -subj /CN=hs-b.test "
        "-addext subjectAltName=DNS:hs-b.test -keyout key.pem -out cert.pem 2>/dev/null && "
        f"cp cert.pem {ROOT}"
    )
    data = {
        "matrix_domain": "hs-b.test",
        "matrix_synapse_tls_mode": "files",
        "matrix_synapse_tls_certificate_path": "/root/tls/cert.pem",
        "matrix_synapse_tls_key_path": "/root/tls/missing-key.pem",
    }
    before = web.ssh("ls /etc/nginx/conf.d").stdout
    run = deploy(tmp_path, web, data, "-y")
    assert run.returncode != 0
    assert "matrix_synapse_tls_key_path = '/root/tls/missing-key.pem': no key there" in run.output
    assert web.ssh("ls /etc/nginx/conf.d").stdout == before  # refused before any change

    data["matrix_synapse_tls_key_path"] = "/root/tls/key.pem"
    run = deploy(tmp_path, web, data, "-y")
    assert run.returncode == 0, run.output[-4000:]
    reply = fetch(web, "https://hs-b.test/_matrix/client/versions")  # trusts only that cert
    assert (reply["status"], reply["upstream"]) == (200, "synapse_main"), reply
    # No ACME here: port 80 redirects challenges too, and certbot was never run.
    challenge = fetch(web, "http://hs-b.test/.well-known/acme-challenge/x")
    assert challenge["status"] == 301
    assert web.ssh("test -e /etc/letsencrypt/renewal", check=False).returncode == 1
    assert_no_changes(deploy(tmp_path, web, data), web.name, commands=None)


def test_dry_diff_shows_the_tls_change_and_changes_nothing(
    tmp_path: Path, pair: tuple[Pebble, TestHost]
) -> None:
    """Turning TLS on for a running deploy: the preview names the certificate step and shows the
    public servers in the nginx file's diff; the host stays byte-identical."""
    pebble, web = pair
    plain = {"matrix_domain": "hs-b.test"}
    assert deploy(tmp_path, web, plain, "-y").returncode == 0
    trust_pebble(web, pebble)
    before = host_snapshot(web), nginx_files(web)
    run = deploy(tmp_path, web, tls_data(pebble, web), "--dry", "--diff")
    assert run.returncode == 0, run.output[-4000:]
    assert f"Certificate for hs-b.test from {pebble.directory_url}" in run.output
    assert "Will modify /etc/nginx/conf.d/matrix-synapse-workers.conf" in run.output
    added = [line.strip() for line in run.output.splitlines() if line.strip().startswith("+ ")]
    for listen in ("listen 0.0.0.0:443 ssl;", "listen 0.0.0.0:8448 ssl;", "listen 0.0.0.0:80;"):
        assert f"+ {' ' * 4}{listen}" in added or f"+ {listen}" in added, run.output[-4000:]
    assert (host_snapshot(web), nginx_files(web)) == before
    assert web.ssh("test -e /etc/letsencrypt/renewal/hs-b.test.conf", check=False).returncode == 1
