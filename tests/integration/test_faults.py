"""Faults produced for real, with the deploy's defaults on (nginx and readiness; only install and
the config check are off, as everywhere the stand-in runs): a worker that never becomes healthy,
an nginx config that `nginx -t` refuses, an apply SIGKILLed while it writes files, two
controllers deploying different settings to one host at once. Issue 9, "Tests that would have
caught these"."""

from __future__ import annotations

import json
import shlex
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.deploying import (
    Run,
    assert_no_changes,
    front_workers,
    install_standin,
    main_pids,
    pyinfra,
    write_inventory,
)
from tests.support.faults import (
    JOURNAL_PATH,
    STANDIN_FAULT_DIR,
    TMP_SUFFIX,
    Rendering,
    active_states,
    health,
    hold_lock_until_applies_wait,
    host_hashes,
    http_get,
    kill_apply_after,
    listing,
    rendering,
    stale_processes,
    timed,
)
from tests.support.testhost import TestHost

pytestmark = pytest.mark.integration

WORKERS_ON = {"matrix_synapse_workers_enabled": True}
ROUTING = "/etc/nginx/conf.d/matrix-synapse-workers.conf"
NGINX_URL = "http://127.0.0.1:8088"  # matrix_synapse_nginx_listen_port's default, inside the host


@pytest.fixture
def host(testhost: TestHost) -> TestHost:
    install_standin(testhost)
    return testhost


def deploy(folder: Path, host: TestHost, data: dict[str, Any], *args: str) -> Run:
    folder.mkdir(parents=True, exist_ok=True)
    inventory = write_inventory(folder / "inventory.py", [(host, data)])
    return pyinfra(folder, inventory, *args, timeout=600)


def assert_converged(host: TestHost, want: Rendering) -> None:
    """Every managed file is the rendering's, no stray file of ours or temporary is left, and
    every planned process is active, answers /health and started after its config was written."""
    assert host_hashes(host, sorted(want.hashes)) == want.hashes
    managed_dirs = sorted({p.rsplit("/", 1)[0] for p in want.hashes})
    assert not [e for e in listing(host, managed_dirs) if TMP_SUFFIX in e]
    entries = listing(host, [want.workers_dir])
    assert sorted(e for e in entries if e.endswith(".yaml")) == sorted(
        p for p in want.hashes if p.startswith(want.workers_dir + "/")
    )
    states = active_states(host, list(want.units))
    assert set(states.values()) == {"active"}, {u: s for u, s in states.items() if s != "active"}
    running = host.ssh(
        "systemctl list-units --plain --no-legend --state=active 'matrix-synapse-worker@*'"
    ).stdout
    assert {line.split()[0] for line in running.splitlines() if line.strip()} == {
        u for u in want.units if u.startswith("matrix-synapse-worker@")
    }
    statuses = health(host, want.health)
    assert set(statuses.values()) == {200}, {u: s for u, s in statuses.items() if s != 200}
    assert not (stale := stale_processes(host, want)), stale


# --- Issue 9: "Readiness failure path for real: a worker that never answers /health fails the run
# after matrix_synapse_readiness_timeout, naming it with its journal tail". The fault is the
# stand-in's own (it reports READY=1 to systemd, then never answers /health with 200), so every
# other readiness criterion (active unit, Redis) is met and only the /health probe can catch it.

READINESS_TIMEOUT = 8


def fronts(front_1_port: int, **extra: Any) -> dict[str, Any]:
    # Moving front-1's port changes its own file only: restarts only front-1.
    return {**front_workers(3, ports={1: front_1_port}), **extra}


def test_a_worker_that_never_answers_health_fails_the_run_naming_it_with_its_journal(
    tmp_path: Path, host: TestHost
) -> None:
    assert (first := deploy(tmp_path, host, fronts(15001), "-y")).returncode == 0, first.output
    before = main_pids(host)
    healthy = rendering(host, fronts(15001))
    assert set(health(host, healthy.health).values()) == {200}  # the stand-in answers /health

    unit = "matrix-synapse-worker@front-1.service"
    host.ssh(f"mkdir -p {STANDIN_FAULT_DIR} && echo no-health > {STANDIN_FAULT_DIR}/front-1.fault")
    with timed() as elapsed:
        short = fronts(15501, matrix_synapse_readiness_timeout=READINESS_TIMEOUT)
        failed = deploy(tmp_path, host, short, "-y")
    assert failed.returncode != 0, failed.output[-3000:]
    assert elapsed[0] >= READINESS_TIMEOUT  # it waited the whole timeout, not less
    assert "matrix_synapse_readiness_timeout" in failed.output, failed.output[-3000:]
    assert unit in failed.output, failed.output[-3000:]
    for other in ("front-0", "front-2"):  # only the worker that is not ready is named
        assert f"matrix-synapse-worker@{other}.service" not in failed.output
    # Its journal tail is in the output: down to its latest message (the process is still up and
    # logs nothing more).
    journal = host.ssh(f"journalctl --no-pager -o cat -n 5 -u {unit}").stdout
    messages = [line.strip() for line in journal.splitlines() if line.strip()]
    assert messages and messages[-1] in failed.output, (messages, failed.output[-3000:])

    # The other processes keep running, untouched and healthy.
    after = main_pids(host)
    others = {u: pid for u, pid in before.items() if u != unit}
    assert {u: after[u] for u in others} == others
    assert after[unit] != before[unit]  # front-1 was restarted (and is the one not ready)
    assert set(active_states(host, list(others)).values()) == {"active"}
    other_ports = {u: p for u, p in healthy.health.items() if u != unit}
    assert set(health(host, other_ports).values()) == {200}

    # Fixed on the host, the next run converges (it owes front-1's restart) and the one after
    # changes nothing.
    host.ssh(f"rm {STANDIN_FAULT_DIR}/front-1.fault")
    fixed = deploy(tmp_path, host, fronts(15501), "-y")
    assert fixed.returncode == 0, fixed.output[-3000:]
    assert_converged(host, rendering(host, fronts(15501)))
    assert_no_changes(deploy(tmp_path, host, fronts(15501)), host.name)


# --- Issue 9: "`nginx -t` refusal puts the previous routing file back and leaves nginx serving".
# The refusal is nginx's own: the operator's file in /etc/nginx/conf.d/ declares an upstream
# named like one of ours, harmless next to the routing file for a monolith and a "duplicate
# upstream" as soon as our new routing file (workers on) declares the same name.

OPERATOR_CONF = "/etc/nginx/conf.d/operator-media.conf"


def file_snapshot(host: TestHost) -> str:
    """Every file under the directories the deploy writes: path, mode, owner, link, checksum."""
    dirs = "/etc/matrix-synapse /etc/systemd/system /etc/nginx/conf.d"
    return host.ssh(
        f"find {dirs} \\( -type f -o -type l \\) -printf '%p %m %u %g %l\\n' | sort; "
        f"find {dirs} -type f -exec sha256sum {{}} + | sort"
    ).stdout


def test_nginx_refusing_the_new_routing_file_puts_the_old_one_back_and_keeps_serving(
    tmp_path: Path, host: TestHost
) -> None:
    assert (first := deploy(tmp_path, host, {}, "-y")).returncode == 0, first.output[-3000:]
    serving = http_get(host, f"{NGINX_URL}/health")
    assert serving[:2] == (200, "synapse_main"), serving  # nginx routes to the stand-in

    host.ssh(
        f"printf 'upstream synapse_media {{\\n    server 127.0.0.1:9000;\\n}}\\n' "
        f"> {OPERATOR_CONF} && nginx -t -q && systemctl reload nginx"
    )
    routing = host.ssh(f"cat {ROUTING}").stdout
    snapshot, pids = file_snapshot(host), main_pids(host)

    run = deploy(tmp_path, host, WORKERS_ON, "-y")
    assert run.returncode != 0, run.output[-3000:]
    assert ROUTING in run.output, run.output[-3000:]
    assert 'duplicate upstream "synapse_media"' in run.output, run.output[-3000:]  # nginx's words

    assert host.ssh(f"cat {ROUTING}").stdout == routing  # byte-identical
    assert file_snapshot(host) == snapshot  # and every other file as it was: no worker file left
    assert main_pids(host) == pids  # no Synapse process restarted, none started
    assert http_get(host, f"{NGINX_URL}/health") == serving  # nginx still serves, as before
    assert host.ssh(f"test -e {JOURNAL_PATH}", check=False).returncode == 1  # no restart owed

    # The operator removes their file: the same deploy goes through, then changes nothing.
    host.ssh(f"rm {OPERATOR_CONF}")
    fixed = deploy(tmp_path, host, WORKERS_ON, "-y")
    assert fixed.returncode == 0, fixed.output[-3000:]
    assert_converged(host, rendering(host, WORKERS_ON))
    assert http_get(host, f"{NGINX_URL}/health")[0] == 200
    assert_no_changes(deploy(tmp_path, host, WORKERS_ON), host.name)


# --- Issue 9: "Atomicity proven, not assumed: SIGKILL the apply at sampled moments while it
# writes files -> every file old or new, next run converges". The kill comes from inside the host
# (a watcher that counts the worker files renamed into place by this run and SIGKILLs
# the host program at the k-th), so it lands in the write phase, which a cut connection cannot
# reach. 1,000 workers (985 generic + 15 one-of-each), the size the deploy promises, killed at
# two moments (30 % and 70 % of the worker files renamed into place): every kill is followed by a
# run restarting all 1,000 processes, and a third sample would take the test past four minutes on
# 2 shared cores. The watcher rescans the directory continuously and fires a few dozen files past
# its target (a hundred or so on a loaded machine); the test checks the files themselves, not the
# watcher's count. Converged also means no process still runs a config older than its file: the
# restarts the killed run owed are not lost. Limit: the kills land between two files, so a writer
# that truncated files in place would rarely be caught in the act (tried: it was not); the
# rename-into-place is what keeps each file whole.

ATOMIC_WORKERS = 1000
KILL_FRACTIONS = (0.3, 0.7)


def pool(cp_max: int) -> dict[str, Any]:
    # workers_cp_max is in every worker's file and in no other file: each change rewrites them all.
    return {
        **WORKERS_ON,
        "matrix_synapse_workers_generic_workers_count": ATOMIC_WORKERS - 15,
        "matrix_synapse_database_workers_cp_max": cp_max,
    }


def test_an_apply_killed_while_writing_leaves_every_file_old_or_new_and_the_next_run_converges(
    tmp_path: Path, host: TestHost
) -> None:
    data = [pool(3), pool(4)]
    renderings = [rendering(host, d) for d in data]
    paths = sorted(renderings[0].hashes)
    assert paths == sorted(renderings[1].hashes)
    changed = [p for p in paths if renderings[0].hashes[p] != renderings[1].hashes[p]]
    workers_dir = renderings[0].workers_dir
    assert len(changed) == ATOMIC_WORKERS and all(p.startswith(workers_dir) for p in changed)
    managed_dirs = sorted({p.rsplit("/", 1)[0] for p in paths})

    first = deploy(tmp_path, host, data[0], "-y")
    assert first.returncode == 0, first.output[-3000:]
    samples = []
    for index, fraction in enumerate(KILL_FRACTIONS):
        old, new = renderings[index % 2], renderings[(index + 1) % 2]
        entries_before = listing(host, managed_dirs)
        watcher = kill_apply_after(host, [workers_dir], max(1, int(fraction * len(changed))))
        killed = deploy(tmp_path, host, data[(index + 1) % 2], "-y")
        watch = watcher.result(timeout=300)
        assert watch["killed"], (fraction, watch, killed.output[-3000:])
        assert killed.returncode != 0, (fraction, killed.output[-3000:])

        # Every managed file is byte-identical to its old or its new rendering...
        found = host_hashes(host, paths)
        mixed = [p for p in paths if found[p] not in (old.hashes[p], new.hashes[p])]
        assert not mixed, (fraction, mixed[:5])
        now_new = sum(found[p] == new.hashes[p] for p in changed)
        # ...no file came or went under a live name: the only new entries are the run's
        # temporary files (dotfiles the next run removes), never a half-written managed file.
        entries = listing(host, managed_dirs)
        appeared = sorted(set(entries) - set(entries_before))
        assert all(TMP_SUFFIX in e.rsplit("/", 1)[1] for e in appeared), (fraction, appeared)
        assert set(entries_before) <= set(entries), (fraction, set(entries_before) - set(entries))
        temporaries = [e for e in entries if TMP_SUFFIX in e]
        samples.append(
            {
                "fraction": fraction,
                "new": now_new,
                "of": len(changed),
                "temporaries": len(temporaries),
                "watcher": watch,
            }
        )

        # The next run finishes the job with no manual step, and the one after changes nothing.
        again = deploy(tmp_path, host, data[(index + 1) % 2], "-y")
        assert again.returncode == 0, (fraction, again.output[-3000:])
        assert_converged(host, new)
        assert_no_changes(deploy(tmp_path, host, data[(index + 1) % 2]), host.name)

    print("kill samples:", json.dumps(samples))
    # The kills landed inside the write phase: some files already new, some still old.
    assert any(0 < s["new"] < s["of"] for s in samples), samples


# --- Issue 9: "Serialization proven: two concurrent runs from two controllers with different
# settings; assert they did not overlap (the second waited for the lock) ... never silently undo
# the first run's change while reporting success". Deterministic: a referee on the host holds the
# deploy lock until both applies wait for it (both controllers have read the host by then), lets
# go, and samples /proc/locks to record who held the lock when.

SERIAL_BASE = {**WORKERS_ON, "matrix_synapse_workers_generic_workers_count": 2}
SERIAL = {
    "more-workers": {**SERIAL_BASE, "matrix_synapse_workers_generic_workers_count": 4},
    "bigger-pools": {**SERIAL_BASE, "matrix_synapse_database_workers_cp_max": 4},
}
CLOCK_SLACK = 0.05  # file timestamps come from the kernel's coarse clock (a tick behind)


def mtimes(host: TestHost, paths: list[str]) -> dict[str, float]:
    script = (
        "import json, os, sys\n"
        "print(json.dumps({p: os.stat(p).st_mtime for p in json.load(sys.stdin)}))"
    )
    return json.loads(host.ssh(f"python3 -c {shlex.quote(script)}", input=json.dumps(paths)).stdout)


def test_two_controllers_at_once_never_overlap_and_the_second_never_undoes_the_first(
    tmp_path: Path, host: TestHost
) -> None:
    start = deploy(tmp_path / "base", host, SERIAL_BASE, "-y")
    assert start.returncode == 0, start.output[-3000:]
    base = rendering(host, SERIAL_BASE)
    want = {name: rendering(host, data) for name, data in SERIAL.items()}
    by_planned = {len(r.units) - 1: name for name, r in want.items()}
    assert len(by_planned) == 2  # the host can tell the two applies apart by their manifests

    referee = hold_lock_until_applies_wait(host, applies=2, timeout=240)
    runs: dict[str, Run] = {}

    def controller(name: str) -> None:
        runs[name] = deploy(tmp_path / name, host, SERIAL[name], "-y")

    threads = [threading.Thread(target=controller, args=(name,)) for name in SERIAL]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    timeline = referee.result(timeout=300)
    assert set(runs) == set(SERIAL), runs

    applies = {int(pid): info for pid, info in timeline["applies"].items()}
    assert len(applies) == 2, timeline
    holds = [h for h in timeline["holds"] if h[0] in applies]
    # One apply took the lock once the referee let go and held it while the other waited: the
    # other was already there before the first took the lock and was still there after it let go.
    # If the second's own hold was seen (a refusal can be shorter than one sample), it came after.
    assert holds and holds[0][1] >= timeline["released"], timeline
    first_pid, _, _, first_last, first_after = holds[0]
    (second_pid,) = set(applies) - {first_pid}
    assert first_after is not None, timeline
    assert applies[second_pid]["seen"] < holds[0][2], timeline
    assert applies[second_pid]["gone"] > first_last, timeline
    assert [h[0] for h in holds[1:]] in ([], [second_pid]), timeline
    assert all(h[2] > first_last for h in holds[1:]), timeline
    first = by_planned[applies[first_pid]["planned_workers"]]
    second = by_planned[applies[second_pid]["planned_workers"]]
    assert runs[first].returncode == 0, runs[first].output[-3000:]

    # Every file the first run changed was written while it held the lock.
    touched = [p for p, h in want[first].hashes.items() if base.hashes.get(p) != h]
    assert touched
    for path, mtime in mtimes(host, touched).items():
        assert holds[0][1] - CLOCK_SLACK <= mtime <= first_after + CLOCK_SLACK, (path, timeline)

    # The second run read the host before the first changed it. It either stops, saying so, with
    # the host exactly in the first run's state and no restarts owed; or (re-planned) ends in its
    # own state. Never success with the first run's change half-undone.
    outcome = runs[second]
    if outcome.returncode != 0:
        assert "changed on the host since" in outcome.output, outcome.output[-3000:]
        assert "run the deploy again" in outcome.output, outcome.output[-3000:]
        assert_converged(host, want[first])
        assert host.ssh(f"test -e {JOURNAL_PATH}", check=False).returncode == 1
    else:
        assert_converged(host, want[second])
        touched = [p for p, h in want[second].hashes.items() if want[first].hashes.get(p) != h]
        for path, mtime in mtimes(host, touched).items():  # written after the first let go
            assert mtime >= first_last - CLOCK_SLACK, (path, timeline)
    print(f"first: {first} (pid {first_pid}), second: {second} (rc {outcome.returncode})")

    # Either controller's rerun converges to its settings; the run after it changes nothing.
    rerun = deploy(tmp_path / second, host, SERIAL[second], "-y")
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert_converged(host, want[second])
    assert_no_changes(deploy(tmp_path / second, host, SERIAL[second]), host.name)
