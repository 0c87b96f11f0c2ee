"""The manifest between controller and host: typed both ways, and a bad one named by its field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploys.host.manifest import (
    BatchManifest,
    FileEntry,
    ManifestError,
    Readiness,
    RedisCheck,
    from_json,
    to_json,
)
from deploys.host.units import Change

HOST_PACKAGE = Path(__file__).resolve().parents[2] / "deploys"

BATCH = BatchManifest(
    files=(FileEntry("/etc/demo/a.conf", "a" * 64, 0o640, "root", "adm", None, "files/0"),),
    lock_path="/run/lock/demo.lock",
    lock_timeout=5,
    owned_globs=("/etc/demo/*.conf",),
    on_change="true",
)


@pytest.mark.parametrize(
    "value",
    [
        BATCH,
        Readiness(30, {"u": "http://[::1]:8008/health"}, {"nginx.service": ("127.0.0.1", 8088)}),
        Readiness(0, redis=RedisCheck("127.0.0.1", 6379, None, "example.org", 17)),
        Change("/x", frozenset({"*", "main"}), True, frozenset({"nginx.service"})),
    ],
)
def test_round_trip(value: object) -> None:
    assert from_json(type(value), to_json(value)) == value


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"][0].update(mode="640"), "manifest.files[0].mode: expected int"),
        (lambda m: m["files"][0].pop("sha256"), "manifest.files[0]: missing key 'sha256'"),
        (lambda m: m.update(lock_timeout=True), "manifest.lock_timeout: expected float"),
        (lambda m: m.update(owned_globs="/etc/*"), "manifest.owned_globs: expected a list"),
        (lambda m: m.update(extra=1), "manifest: unknown key 'extra'; allowed: files, "),
    ],
)
def test_a_bad_manifest_names_the_field(edit, message: str) -> None:
    data = json.loads(to_json(BATCH))
    edit(data)
    with pytest.raises(ManifestError) as error:
        from_json(BatchManifest, json.dumps(data))
    assert str(error.value).startswith(message)


def test_the_host_program_refuses_a_bad_manifest_naming_it(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"files": [], "lock_path": 1}')
    result = subprocess.run(
        [sys.executable, "-m", "host.batch", str(tmp_path)],
        cwd=HOST_PACKAGE,  # as on the host: the package ``host`` in the working directory
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "pyinfra-batch: error: manifest.lock_path: expected str, got 1"
    )
