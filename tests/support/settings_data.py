"""Host data as pyinfra would see it, for tests that plan and render without a host."""

from __future__ import annotations

from typing import Any

from deploys.core.settings import load_defaults

# The secrets every host of a cluster of several machines must share (required and identical),
# for the tests and the benchmark that deploy or plan one.
CLUSTER_SECRETS = {
    "matrix_synapse_worker_replication_secret": "replication-secret-0123456789-abcdefghij",
    "matrix_synapse_redis_password": "redis-password-0123456789",
    "matrix_synapse_signing_key": "ed25519 a_test W1MZ5KJrgBLX0km6BG4yXqDsReuCjglSBN0c8OQ3qr0",
    "matrix_synapse_macaroon_secret_key": "macaroon-secret-0123456789-abcdefghijkl",
    "matrix_synapse_form_secret": "form-secret-0123456789-abcdefghijklmnop",
}


def make_data(**overrides: Any) -> dict[str, Any]:
    """group_data/all.py plus ``matrix_domain`` and ``overrides``."""
    data = load_defaults()
    data["matrix_domain"] = "example.org"
    data.update(overrides)
    return data
