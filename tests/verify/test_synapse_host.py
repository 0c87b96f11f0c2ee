"""Files, modes, owners and units of a deployed Synapse host, parametrised from the plan."""

from __future__ import annotations

import shlex

import pytest

from tests.verify.conftest import Expected, sha256


def test_file_is_as_planned(host, desired_file) -> None:
    remote = host.file(desired_file.path)
    assert remote.is_file
    assert remote.mode == desired_file.mode
    assert (remote.user, remote.group) == (desired_file.owner, desired_file.group)
    assert remote.sha256sum == sha256(desired_file.content)


def test_unit_is_enabled_and_active(host, unit: str) -> None:
    service = host.service(unit)
    assert service.is_enabled
    assert service.is_running


def test_secret_is_private_and_not_empty(host, secret_path: str, want: Expected) -> None:
    secret = host.file(secret_path)
    assert secret.is_file and secret.size > 0
    assert secret.mode == 0o600
    assert secret.user == want.settings.user


def test_no_unplanned_worker_is_enabled(host, want: Expected) -> None:
    wants = host.run("ls /etc/systemd/system/matrix-synapse.target.wants/").stdout.split()
    planned = {p.unit for p in want.plan.workers} | {"matrix-synapse.service"}
    assert set(wants) == planned


# The checks below need the real Synapse running (a stand-in host deselects them with
# `-m "not live_synapse"`).


# python3 is on every host this deploy targets (the host program runs on it); curl may not be.
HTTP_GET = """
import sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=10) as response:
        print(response.status, response.read().decode(), sep="\\n", end="")
except urllib.error.HTTPError as error:
    print(error.code, end="")
"""


def http_get(host, url: str) -> tuple[int, str]:
    """(status, body) of a GET made on the host itself."""
    status, _, body = host.check_output(
        f"python3 -c {shlex.quote(HTTP_GET)} {shlex.quote(url)}"
    ).partition("\n")
    return int(status), body


@pytest.mark.live_synapse
def test_listener_is_listening(host, listener) -> None:
    address = listener.bind_addresses[0]
    assert host.socket(f"tcp://{address}:{listener.port}").is_listening


@pytest.mark.live_synapse
def test_health_answers_ok(host, health_url: str) -> None:
    assert http_get(host, health_url) == (200, "OK")


@pytest.mark.live_synapse
def test_metrics_target_answers(host, metrics_target) -> None:
    """Every target of the Prometheus file_sd file (its content: test_file_is_as_planned)."""
    status, body = http_get(host, metrics_target.url)
    assert status == 200
    assert any(line.startswith("synapse_") for line in body.splitlines())


@pytest.mark.live_synapse
def test_every_process_is_subscribed_to_redis(host, want: Expected) -> None:
    redis = want.settings.redis
    target = f"-s {redis.path}" if redis.path else f"-h {redis.host} -p {redis.port}"
    out = host.check_output(f"redis-cli {target} PUBSUB NUMSUB {want.settings.domain}")
    assert int(out.split()[-1]) == len(want.plan.processes)


@pytest.mark.live_synapse
def test_nginx_config_is_valid_and_routes(host, want: Expected) -> None:
    if not want.settings.nginx.enabled:
        pytest.fail("matrix_synapse_nginx_enabled is false: deselect this test instead")
    assert host.run("nginx -t").rc == 0
    port = want.settings.nginx.listen_port
    status, _ = http_get(host, f"http://127.0.0.1:{port}/_matrix/client/versions")
    assert status == 200
