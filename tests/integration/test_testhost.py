"""Tests of the throwaway test-host harness itself (tests/support/testhost.py).

Run: .venv/bin/pytest -p tests.support.fixtures tests/integration/test_testhost.py -v
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra

from tests.support.fixtures import unique_host_name
from tests.support.testhost import (
    TestHost,
    TestHostError,
    _listening,
    ensure_derived_tree,
    key_for_tree,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PYINFRA = REPO / ".venv/bin/pyinfra"

Factory = Callable[..., list[TestHost]]


def _alive(pid: int | None) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _assert_cleaned_up(host: TestHost, pids: list[int | None]) -> None:
    assert pids and all(pids), pids
    assert not [pid for pid in pids if _alive(pid)], "processes survived stop()"
    assert not [path for path in host.cgroup_dirs if path.exists()], "cgroup dirs survived stop()"
    assert not host.run_dir.exists()
    assert not _listening(host.port)


def test_boots_to_running_with_private_network(testhost: TestHost) -> None:
    assert testhost.ssh("systemctl is-system-running").stdout.strip() == "running"
    assert testhost.ssh("hostname").stdout.strip() == testhost.name
    assert testhost.ssh("ls /sys/class/net").stdout.split() == ["lo"]
    assert testhost.ssh("python3 -c 'print(6 * 7)'").stdout.strip() == "42"


def test_deploy_user_has_passwordless_sudo(testhost: TestHost) -> None:
    assert testhost.ssh("id -un", user="deploy").stdout.strip() == "deploy"
    testhost.ssh("sudo -n true", user="deploy")
    assert testhost.ssh("sudo -n id -u", user="deploy").stdout.strip() == "0"


def test_failed_command_raises_with_output(testhost: TestHost) -> None:
    with pytest.raises(subprocess.CalledProcessError, match="boom"):
        testhost.ssh("echo boom >&2; exit 3")
    assert testhost.ssh("exit 3", check=False).returncode == 3


def test_hosts_are_independent(testhost_factory: Factory) -> None:
    a, b = testhost_factory(2)
    assert a.port != b.port
    a.ssh("echo from-a > /etc/marker")
    assert b.ssh("test -e /etc/marker", check=False).returncode == 1
    # Same TCP port in both guests: private network namespaces do not collide.
    for host in (a, b):
        host.ssh(
            "systemd-run --unit=listener -p Type=exec python3 -m http.server 8008 --bind 127.0.0.1"
        )
    fetch = "python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8008/')\""
    probe = f"for i in $(seq 50); do {fetch} 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
    for host in (a, b):
        host.ssh(probe)
        assert host.ssh("systemctl is-active listener").stdout.strip() == "active"
    a.ssh("systemctl stop listener")
    assert b.ssh("systemctl is-active listener").stdout.strip() == "active"


def test_pyinfra_cli_as_root_and_with_sudo(testhost: TestHost, tmp_path: Path) -> None:
    name, data = testhost.inventory_entry()
    _, deploy_data = testhost.inventory_entry(user="deploy")
    (tmp_path / "root_inventory.py").write_text(f"hosts = [{(name, data)!r}]\n")
    (tmp_path / "deploy_inventory.py").write_text(f"hosts = [{(name, deploy_data)!r}]\n")

    as_root = subprocess.run(
        [PYINFRA, "-y", "root_inventory.py", "exec", "--", "hostname"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert as_root.returncode == 0, as_root.stdout + as_root.stderr
    assert f"[{name}] {name}" in as_root.stdout + as_root.stderr

    with_sudo = subprocess.run(
        [PYINFRA, "-y", "deploy_inventory.py", "exec", "--sudo", "--", "id", "-un"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert with_sudo.returncode == 0, with_sudo.stdout + with_sudo.stderr
    assert f"[{name}] root" in with_sudo.stdout + with_sudo.stderr


def test_testinfra_spec(testhost: TestHost) -> None:
    host = testinfra.get_host(testhost.testinfra_spec())
    assert host.check_output("hostname") == testhost.name
    assert host.service("ssh").is_running
    assert host.user().name == "root"
    deploy = testinfra.get_host(testhost.testinfra_spec(user="deploy"))
    assert deploy.user().name == "deploy"


def test_stop_kills_recorded_processes_and_removes_cgroups(base_tree: Path) -> None:
    host = TestHost.start(unique_host_name(), base_tree)
    pids = [host.nspawn_pid, host.guest_pid, host.bridge_pid]
    assert all(_alive(pid) for pid in pids)
    assert all(path.is_dir() for path in host.cgroup_dirs)
    host.stop()
    _assert_cleaned_up(host, pids)
    host.stop()  # idempotent


def test_stop_recovers_when_nspawn_was_killed(base_tree: Path) -> None:
    host = TestHost.start(unique_host_name(), base_tree)
    pids = [host.nspawn_pid, host.guest_pid, host.bridge_pid]
    os.kill(host.nspawn_pid or 0, signal.SIGKILL)  # leaves the guest running as an orphan
    time.sleep(0.2)
    assert _alive(host.guest_pid)
    host.stop()
    _assert_cleaned_up(host, pids)


def test_context_manager_stops(base_tree: Path) -> None:
    with TestHost.start(unique_host_name(), base_tree) as host:
        pids = [host.nspawn_pid, host.guest_pid, host.bridge_pid]
        host.ssh("true")
    _assert_cleaned_up(host, pids)


def test_name_in_use_is_refused(testhost: TestHost, base_tree: Path) -> None:
    with pytest.raises(TestHostError, match="in use"):
        TestHost.start(testhost.name, base_tree)
    assert testhost.ssh("systemctl is-system-running").stdout.strip() == "running"


def test_boot_failure_reports_console_log(tmp_path: Path) -> None:
    empty_root = tmp_path / "rootfs"
    empty_root.mkdir()
    key_for_tree(empty_root).write_text("")
    name = unique_host_name()
    with pytest.raises(TestHostError, match=r"(?s)nspawn exited.*console log") as excinfo:
        TestHost.start(name, empty_root, timeout=10)
    assert "OS root directory" in str(excinfo.value)
    assert not [path for path in TestHost(name, empty_root).cgroup_dirs if path.exists()]


def test_boot_timeout_is_reported_and_cleaned_up(base_tree: Path) -> None:
    name = unique_host_name()
    with pytest.raises(TestHostError, match=r"(?s)boot timed out.*console log"):
        TestHost.start(name, base_tree, timeout=0.05)
    assert not [path for path in TestHost(name, base_tree).cgroup_dirs if path.exists()]


def test_degraded_boot_names_the_failed_unit(base_tree: Path, tmp_path: Path) -> None:
    unit = "[Service]\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n"
    commands = [f"printf '{unit}' > /etc/systemd/system/broken.service", "systemctl enable broken"]
    tree = ensure_derived_tree("degraded", commands, "1", cache=tmp_path / "cache", base=base_tree)
    with pytest.raises(TestHostError, match=r"(?s)system is 'degraded'.*broken\.service"):
        TestHost.start(unique_host_name(), tree)
    shutil.rmtree(tmp_path / "cache")


def test_derived_tree_is_built_once_and_boots(base_tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    stale = cache / "derived-selftest@0-old"
    (stale / "rootfs").mkdir(parents=True)
    commands = ["echo derived >> /etc/derived-marker", "systemctl enable systemd-networkd"]

    def derive(version: str) -> Path:
        return ensure_derived_tree("selftest", commands, version, cache=cache, base=base_tree)

    tree = derive("1")
    assert not stale.exists(), "stale version was not pruned"
    assert derive("1") == tree
    assert (tree / "etc/derived-marker").read_text() == "derived\n"  # commands ran once
    assert key_for_tree(tree).read_text() == key_for_tree(base_tree).read_text()
    assert not (base_tree / "etc/derived-marker").exists()

    with TestHost.start(unique_host_name(), tree) as host:
        assert host.ssh("cat /etc/derived-marker", user="deploy").stdout == "derived\n"
        assert host.ssh("systemctl is-active systemd-networkd").stdout.strip() == "active"
        host.ssh("echo changed > /etc/derived-marker")
        assert (tree / "etc/derived-marker").read_text() == "derived\n"  # volatile overlay
        bumped = derive("2")
        assert bumped != tree and tree.is_dir(), "a tree in use by a running host was pruned"
        host.ssh("systemctl is-system-running")
    entries = sorted(p.name for p in cache.glob("derived-selftest@*"))
    assert entries == sorted([tree.parent.name, bumped.parent.name])
    shutil.rmtree(cache)


def test_derived_tree_failing_command_leaves_no_entry(base_tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(TestHostError, match=r"(?s)setup commands failed.*no-such-command"):
        ensure_derived_tree(
            "broken", ["true", "no-such-command"], version="1", cache=cache, base=base_tree
        )
    assert [p.name for p in cache.iterdir()] == [".derived-broken.lock"]


def test_concurrent_derived_builds_are_serialised(base_tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    script = (
        "import sys; from pathlib import Path; "
        "from tests.support.testhost import ensure_derived_tree; "
        "print(ensure_derived_tree('race', ['echo built >> /etc/race', 'sleep 1'], '1', "
        "cache=Path(sys.argv[1]), base=Path(sys.argv[2])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, cache, base_tree],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert Path(paths.pop(), "etc/race").read_text() == "built\n"
    shutil.rmtree(cache)


def test_cli_boot_runs_until_sigterm(base_tree: Path) -> None:
    name = unique_host_name("cli")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.testhost", "boot", name],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        assert proc.stdout
        for line in proc.stdout:
            lines.append(line)
            if line.rstrip() == "}":
                break
        info = json.loads("".join(lines))
        assert info["name"] == name and info["inventory"][1]["ssh_port"] == info["port"]
        out = subprocess.run(
            ["ssh", *info["ssh"].split()[1:], "hostname"], capture_output=True, text=True
        )
        assert out.stdout.strip() == name, out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    assert not [path for path in TestHost(name, base_tree).cgroup_dirs if path.exists()]
    assert not _listening(info["port"])
