"""Run the operator's verification suite (tests/verify) against a test host and hold it to account:
everything passed, nothing skipped or deselected, and every live check ran as often as the host's
own config files call for."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from deploys.core.settings import REPO_ROOT
from tests.support.testhost import TestHost

FILE_SD = "/etc/prometheus/file_sd/synapse.json"  # matrix_synapse_metrics_file_sd_path's default
# tests/verify checks that need Synapse (or the stand-in) running, by test function.
LIVE_CHECKS = (
    "test_listener_is_listening",
    "test_health_answers_ok",
    "test_metrics_target_answers",
    "test_every_process_is_subscribed_to_redis",
    "test_nginx_config_is_valid_and_routes",
)


def live_check_counts(host: TestHost) -> Counter[str]:
    """How many of each live check the deployed host needs, read from its Synapse config files
    (not from the plan tests/verify derives its checks from): one per listener, one /health per
    process with an HTTP listener, one scrape per metrics listener when the Prometheus file
    (default path) is there, one Redis and one nginx check."""
    out = host.ssh(
        "cd /etc/matrix-synapse && for f in homeserver.yaml workers/*.yaml; do "
        "echo '--- '$f; cat $f; done"
    ).stdout
    file_sd = host.ssh(f"test -f {FILE_SD}", check=False).returncode == 0
    counts: Counter[str] = Counter({"test_metrics_target_answers": 0})
    for chunk in out.split("--- ")[1:]:
        config = yaml.safe_load(chunk.split("\n", 1)[1])
        listeners = config.get("listeners") or config.get("worker_listeners") or []
        counts["test_listener_is_listening"] += sum(len(x["bind_addresses"]) > 0 for x in listeners)
        if any(x["type"] == "http" for x in listeners):
            counts["test_health_answers_ok"] += 1
        if file_sd:
            counts["test_metrics_target_answers"] += sum(x["type"] == "metrics" for x in listeners)
    counts["test_every_process_is_subscribed_to_redis"] = 1
    counts["test_nginx_config_is_valid_and_routes"] = 1
    return counts


def assert_verify_passes_with_live_checks(host: TestHost, inventory: Path) -> None:
    """``pytest tests/verify`` against the host: everything passed, nothing skipped or
    deselected, and every live check ran (as many as the host's config files call for)."""
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/verify",
            f"--hosts={host.testinfra_spec()}",
            f"--inventory={inventory}",
            "-rA",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    tail = verify.stdout[-6000:]
    assert verify.returncode == 0, tail
    summary = verify.stdout.strip().splitlines()[-1]
    outcomes = dict((word, int(n)) for n, word in re.findall(r"(\d+) (\w+)", summary))
    assert set(outcomes) == {"passed"}, summary  # no failed, skipped, deselected, error, xfail
    passed = Counter(
        m[1] for m in re.finditer(r"^PASSED tests/verify/\S+::(\w+)", verify.stdout, re.M)
    )
    assert sum(passed.values()) == outcomes["passed"], tail
    want = live_check_counts(host)
    assert {check: passed[check] for check in LIVE_CHECKS} == dict(want), tail
    assert outcomes["passed"] >= sum(want.values()) > 2
