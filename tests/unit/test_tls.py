"""Public TLS, the pure part (deploys/core/tls.py, deploys/core/settings/tls.py): which names the
certificate covers, the public servers' model and nginx file, the certbot and hook commands, and
bad settings named. The deploy against pebble is tests/integration/test_tls_deploy.py."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from deploys.core.plan import build_plan
from deploys.core.render import desired_state, nginx_config
from deploys.core.settings import Settings, SettingsError, parse_settings
from deploys.core.tls import (
    acme_script,
    certbot_command,
    certbot_dropin,
    certificate_names,
    deploy_hook,
    tls_servers,
    well_known,
)
from tests.support.settings_data import make_data


def settings(**data: object) -> Settings:
    return parse_settings(make_data(**data))


def test_names_come_from_the_setting_then_public_baseurl_then_the_domain() -> None:
    assert certificate_names(settings(matrix_domain="example.org")) == ("example.org",)
    baseurl = settings(matrix_synapse_public_baseurl="https://matrix.example.org/")
    assert certificate_names(baseurl) == ("matrix.example.org",)
    named = settings(matrix_synapse_tls_server_names=["a.example.org", "b.example.org"])
    assert certificate_names(named) == ("a.example.org", "b.example.org")


def test_off_renders_no_public_server() -> None:
    s = settings()
    assert tls_servers(s) is None
    text = nginx_config(build_plan(s, "m"), s.nginx, tls_servers(s))
    assert text.count("server {") == 1 and "ssl" not in text


def test_acme_servers_share_the_plain_servers_routing() -> None:
    s = settings(
        matrix_synapse_tls_mode="acme",
        matrix_synapse_workers_enabled=True,
        matrix_synapse_tls_listen_addresses=["0.0.0.0", "::"],
    )
    servers = tls_servers(s)
    assert servers is not None
    assert servers.https_listen == (
        "0.0.0.0:443 ssl",
        "[::]:443 ssl",
        "0.0.0.0:8448 ssl",
        "[::]:8448 ssl",
    )
    text = nginx_config(build_plan(s, "m"), s.nginx, servers)
    plain, public, port80 = text.split("\nserver {")[1:]
    plain_locations = [line for line in plain.splitlines() if "location ~" in line]
    public_locations = [line for line in public.splitlines() if "location ~" in line]
    assert len(plain_locations) > 20 and public_locations == plain_locations
    assert "X-Forwarded-Proto https;" in public
    assert "location ^~ /_synapse/admin {\n        return 404;" in public
    assert "location ^~ /_synapse/metrics {\n        return 404;" in public
    assert "root /var/lib/matrix-synapse-acme;" in port80
    assert "return 301 https://$host$request_uri;" in port80


def test_exposed_admin_api_and_metrics_and_no_federation_port() -> None:
    s = settings(
        matrix_synapse_tls_mode="files",
        matrix_synapse_tls_expose_admin_api=True,
        matrix_synapse_tls_expose_metrics=True,
        matrix_synapse_tls_federation_port=None,
    )
    servers = tls_servers(s)
    assert servers is not None
    assert servers.https_listen == ("0.0.0.0:443 ssl",)
    assert servers.acme_webroot is None
    text = nginx_config(build_plan(s, "m"), s.nginx, servers)
    public = text.split("\nserver {")[2]
    assert "/_synapse/admin" not in public
    assert "location = /_synapse/metrics {\n        proxy_pass http://127.0.0.1:9100;" in public
    assert "acme-challenge" not in text


def test_certbot_command_and_its_deploy_hook() -> None:
    s = settings(
        matrix_synapse_tls_mode="acme",
        matrix_synapse_tls_server_names=["a.example.org", "b.example.org"],
        matrix_synapse_tls_acme_directory_url="https://acme.test:14000/dir",
        matrix_synapse_tls_acme_ca_bundle="/etc/ca.pem",
    )
    command = certbot_command(s.tls, certificate_names(s))
    assert command.startswith("mkdir -p /var/lib/matrix-synapse-acme && REQUESTS_CA_BUNDLE=")
    argv = shlex.split(command.split(" && ", 1)[1].split(" ", 1)[1])
    assert argv[:2] == ["certbot", "certonly"]
    assert argv[argv.index("--server") + 1] == "https://acme.test:14000/dir"
    assert argv[argv.index("--cert-name") + 1] == "a.example.org"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-d"] == [
        "a.example.org",
        "b.example.org",
    ]
    assert "--register-unsafely-without-email" in argv
    assert argv[argv.index("--deploy-hook") + 1] == deploy_hook(s.tls)
    # The hook reloads nginx (never restarts it) and writes the key 0600.
    assert deploy_hook(s.tls).endswith("systemctl reload nginx")
    assert "restart" not in deploy_hook(s.tls)
    assert 'install -D -m 0600 "$RENEWED_LINEAGE/privkey.pem"' in deploy_hook(s.tls)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("matrix_synapse_tls_mode", "on", "allowed: ('off', 'acme', 'files')"),
        ("matrix_synapse_tls_server_names", ["*.example.org"], "no wildcards"),
        ("matrix_synapse_tls_federation_port", 0, "allowed: a port, or None"),
        ("matrix_synapse_tls_acme_directory_url", "acme.test/dir", "an http(s) URL"),
        ("matrix_synapse_tls_acme_email", "admin", "an email address"),
        ("matrix_synapse_tls_certificate_path", "cert.pem", "an absolute path"),
        ("matrix_synapse_tls_key_path", "/etc/x y.pem", "without spaces"),
        ("matrix_synapse_well_known_server", "matrix.example.org", "host:port"),
        ("matrix_synapse_well_known_client_base_url", "matrix.example.org", "an http(s) URL"),
    ],
)
def test_bad_settings_are_named(key: str, value: object, allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**{key: value})
    assert f"{key} = {value!r}: " in str(caught.value)
    assert allowed in str(caught.value)


def test_delegation_only_when_the_domain_is_not_the_served_name() -> None:
    same = settings(matrix_domain="example.org", matrix_synapse_tls_mode="acme")
    assert well_known(same) == {}
    delegated = settings(
        matrix_domain="example.org",
        matrix_synapse_tls_mode="acme",
        matrix_synapse_tls_server_names=["matrix.example.org"],
    )
    assert well_known(delegated) == {
        "server": {"m.server": "matrix.example.org:443"},
        "client": {"m.homeserver": {"base_url": "https://matrix.example.org"}},
    }
    text = nginx_config(build_plan(delegated, "m"), delegated.nginx, tls_servers(delegated))
    assert (
        "location = /.well-known/matrix/server {\n        default_type application/json;\n"
        '        add_header Access-Control-Allow-Origin "*" always;\n'
        '        return 200 "{\\"m.server\\": \\"matrix.example.org:443\\"}";' in text
    )
    chosen = settings(
        matrix_domain="example.org",
        matrix_synapse_tls_mode="files",
        matrix_synapse_tls_server_names=["matrix.example.org"],
        matrix_synapse_well_known_server="fed.example.org:8448",
        matrix_synapse_public_baseurl="https://client.example.org/",
    )
    assert well_known(chosen) == {
        "server": {"m.server": "fed.example.org:8448"},
        "client": {"m.homeserver": {"base_url": "https://client.example.org"}},
    }
    off = settings(
        matrix_domain="example.org",
        matrix_synapse_tls_mode="acme",
        matrix_synapse_tls_server_names=["matrix.example.org"],
        matrix_synapse_well_known_enabled=False,
    )
    assert well_known(off) == {} and "well-known/matrix" not in nginx_config(
        build_plan(off, "m"), off.nginx, tls_servers(off)
    )


def test_certbot_service_drop_in_only_for_a_private_ca() -> None:
    public = settings(matrix_synapse_tls_mode="acme")
    assert certbot_dropin(public) is None
    private = settings(matrix_synapse_tls_mode="acme", matrix_synapse_tls_acme_ca_bundle="/ca.pem")
    dropin = certbot_dropin(private)
    assert dropin is not None and dropin.endswith(
        "[Service]\nEnvironment=REQUESTS_CA_BUNDLE=/ca.pem\n"
    )
    files = desired_state(private, build_plan(private, "m")).files
    path = "/etc/systemd/system/certbot.service.d/50-pyinfra-synapse-acme.conf"
    assert files[path].unit_file and files[path].content.decode() == dropin


def test_acme_script_adds_a_challenge_server_only_while_certbot_runs(tmp_path) -> None:
    s = settings(
        matrix_synapse_tls_mode="acme",
        matrix_synapse_tls_server_names=["a.example.org", "b.example.org"],
    )
    script = acme_script(s, certificate_names(s), "REFUSED", "UNREACHABLE")
    snippet = "/etc/nginx/conf.d/pyinfra-synapse-acme-challenge.conf"
    assert script.startswith(f"cat > {snippet} <<'EOF'\n")
    assert "    server_name a.example.org b.example.org;\n" in script
    assert "        root /var/lib/matrix-synapse-acme;\n" in script
    lines = script.splitlines()
    certbot = next(i for i, line in enumerate(lines) if "certbot certonly" in line)
    removed = [i for i, line in enumerate(lines) if line.startswith(f"rm -f {snippet};")]
    assert removed == [certbot + 1]  # gone again whatever certbot did, before any message
    (tmp_path / "acme.sh").write_text(script)
    assert subprocess.run(["sh", "-n", str(tmp_path / "acme.sh")]).returncode == 0
