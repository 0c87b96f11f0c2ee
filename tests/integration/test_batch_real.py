"""The generic ``files.batch`` operation on a plain test host (no Synapse): many files in one
command, reruns that change nothing, one changed file, stale removal, a failing check rolled
back, foreign files untouched, and round trips that do not grow with the file count."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.batching import batch_applies, deploy_demo, hook_runs, inodes
from tests.support.deploying import assert_no_changes
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

CONF_D = "/etc/demo/conf.d"
FOREIGN = {f"{CONF_D}/.hidden.conf": "not ours: a dotfile\n", f"{CONF_D}/sub/1.conf": "nor this\n"}


def test_many_files_one_command_then_one_change_stale_removal_and_rollback(
    tmp_path: Path, testhost: TestHost
) -> None:
    host = testhost
    first = deploy_demo(tmp_path, host, "-y", demo_count=200)
    assert first.returncode == 0, first.output[-3000:]
    assert len(batch_applies(first, host)) == 1
    assert first.commands[host.name] == 2  # the fact (-y: one pass) and the apply
    listing = host.ssh(f"stat -c '%a %U %G %n' {CONF_D}/0000.conf /etc/demo/demo.conf").stdout
    assert listing.splitlines() == [
        f"640 root root {CONF_D}/0000.conf",
        "644 root root /etc/demo/demo.conf",
    ]
    assert host.ssh("cat /etc/demo/demo.conf").stdout.startswith(
        f"# 200 files in conf.d, on {host.name}"
    )
    assert len(hook_runs(host)) == 1 and len(hook_runs(host)[0]) == 201

    for path, content in FOREIGN.items():
        host.ssh(f"mkdir -p $(dirname {path}) && cat > {path}", input=content)
    before = inodes(host)

    rerun = deploy_demo(tmp_path, host, demo_count=200)  # prepare + execute: the fact twice
    assert_no_changes(rerun, host.name, commands=2)
    assert "No changes" in rerun.output and batch_applies(rerun, host) == []
    assert inodes(host) == before and len(hook_runs(host)) == 1

    # One file changes: exactly that one is written (a new inode), the hook gets its path.
    edit = {"7": "changed = yes\n"}
    changed = deploy_demo(tmp_path, host, "-y", demo_count=200, demo_edits=edit)
    assert changed.returncode == 0, changed.output[-3000:]
    after = inodes(host)
    assert {p for p in after if after[p] != before[p]} == {f"{CONF_D}/0007.conf"}
    assert hook_runs(host)[-1] == [f"{CONF_D}/0007.conf"]

    # A file of ours by name that the plan does not have is removed; foreign ones stay.
    host.ssh(f"echo 'id = 9999' > {CONF_D}/9999.conf")
    stale = deploy_demo(tmp_path, host, "-y", demo_count=200, demo_edits=edit)
    assert stale.returncode == 0, stale.output[-3000:]
    assert host.ssh(f"test -e {CONF_D}/9999.conf || echo gone").stdout.strip() == "gone"
    assert hook_runs(host)[-1] == [f"{CONF_D}/9999.conf"]
    for path, content in FOREIGN.items():
        assert host.ssh(f"cat {path}").stdout == content

    # A failing check puts every file back and the hook does not run.
    settled = inodes(host)
    hooks = len(hook_runs(host))
    refused = deploy_demo(
        tmp_path,
        host,
        "-y",
        demo_count=201,  # a new file and a new demo.conf, checked with a failing command
        demo_edits={"7": "changed = again\n"},
        demo_check="echo 'demo: bad config' >&2; exit 2",
    )
    assert refused.returncode != 0
    assert "/etc/demo/demo.conf (`echo 'demo: bad config' >&2; exit 2`) was refused" in (
        refused.output
    )
    assert "the previous files were put back and the on_change hook did not run" in refused.output
    assert "demo: bad config" in refused.output
    assert inodes(host) == settled and len(hook_runs(host)) == hooks
    assert host.ssh(f"ls -A {CONF_D} | grep -c pyinfra-synapse-tmp || true").stdout.strip() == "0"


def test_round_trips_do_not_grow_with_the_file_count(tmp_path: Path, testhost: TestHost) -> None:
    counts = {}
    for n in (10, 500):
        create = deploy_demo(tmp_path, testhost, demo_count=n)  # normal run: prepare + execute
        assert create.returncode == 0, create.output[-3000:]
        assert len(batch_applies(create, testhost)) == 1
        rerun = deploy_demo(tmp_path, testhost, demo_count=n)
        assert_no_changes(rerun, testhost.name, commands=2)
        counts[n] = (create.commands[testhost.name], rerun.commands[testhost.name])
    assert counts[10] == counts[500] == (3, 2), counts
    files = testhost.ssh(f"ls {CONF_D} | wc -l").stdout.strip()
    assert files == "500"
