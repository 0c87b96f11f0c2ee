"""The worker layout of the benchmark's one-cluster row: 8 machines x 130 workers (issue 13).

Pure (host data only); ``tests/bench/run.py`` deploys it to test hosts on one private bridge and
``tests/bench/test_cluster_layout.py`` checks that it plans as one cluster.

- the main host (first): the single-host row's 130, the little-federation-helper preset (one
  federation sender) plus 129 generic workers, next to the main process, nginx and Redis;
- every workers host: 100 generic workers, 10 federation senders, 10 pushers and 10 event
  persisters (``events`` stream writers), 130 in all. Only multi-instance types (a single-instance
  duty may run once per cluster) and no room, sync, client-reader or federation-reader workers
  (the cluster refuses generic workers mixed with those). Over 8 machines that is 829 generic
  workers, 71 federation senders, 70 pushers and 70 event persisters: each type within its
  1,000-port block, each machine within 1,024 workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.support.settings_data import CLUSTER_SECRETS as SECRETS

MACHINES = 8
WORKERS_PER_MACHINE = 130
DOMAIN = "cluster.example.org"

# The secrets every machine of a cluster shares (README, "Several machines"); test values.
WORKERS_HOST_COUNTS = {
    "generic": 100,
    "federation_sender": 10,
    "pusher": 10,
    "stream_writer_events_stream": 10,
}


def cluster_data(
    addresses: Sequence[str], workers: int = WORKERS_PER_MACHINE
) -> list[dict[str, Any]]:
    """Host data for one cluster on ``len(addresses)`` machines, main first, each machine at its
    private address with exactly ``workers`` workers (``workers`` >= 31: the workers hosts' 30
    specialised workers plus at least one generic)."""
    specialised = sum(WORKERS_HOST_COUNTS.values()) - WORKERS_HOST_COUNTS["generic"]
    if workers <= specialised:
        raise ValueError(f"{workers} workers per machine: need more than {specialised}")
    common = {
        **SECRETS,
        "matrix_domain": DOMAIN,
        "matrix_synapse_workers_enabled": True,
        "matrix_synapse_workers_preset": "little-federation-helper",
    }
    main = {
        **common,
        "matrix_synapse_role": "main",
        "matrix_synapse_private_address": addresses[0],
        "matrix_synapse_workers_generic_workers_count": workers - 1,
    }
    counts = {**WORKERS_HOST_COUNTS, "generic": workers - specialised}
    others = [
        {
            **common,
            "matrix_synapse_role": "workers",
            "matrix_synapse_private_address": address,
            **{f"matrix_synapse_workers_{key}_workers_count": n for key, n in counts.items()},
        }
        for address in addresses[1:]
    ]
    return [main, *others]
