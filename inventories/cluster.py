# Example inventory of one homeserver on three machines (README, "Several machines"):
# `pyinfra inventories/cluster.py deploys/synapse.py`.
#
# Every host of this file with the same matrix_domain is one cluster. matrix-1 runs the main
# process, nginx, Redis and PostgreSQL; matrix-2 and matrix-3 run only the workers their own
# counts plan (names are numbered across the cluster: generic-0 .. generic-7 on matrix-2).
# Each machine reaches the others at its matrix_synapse_private_address (a private network).
#
# The secrets every machine shares come from the environment here; keep them out of the
# repository. Generate each once: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'

import os

# No worker unless a host's counts say so (the preset would repeat main's single duties).
NO_WORKERS = {
    "matrix_synapse_workers_enabled": True,
    "matrix_synapse_workers_preset": "little-federation-helper",
    "matrix_synapse_workers_federation_sender_workers_count": 0,
}

synapse_cluster = (
    [
        (
            "matrix-1.example.org",
            {
                **NO_WORKERS,
                "matrix_synapse_role": "main",
                "matrix_synapse_private_address": "10.0.0.1",
            },
        ),
        (
            "matrix-2.example.org",
            {
                **NO_WORKERS,
                "matrix_synapse_role": "workers",
                "matrix_synapse_private_address": "10.0.0.2",
                "matrix_synapse_workers_stream_writer_events_stream_workers_count": 2,
                "matrix_synapse_workers_stream_writer_typing_stream_workers_count": 1,
                "matrix_synapse_workers_generic_workers_count": 8,
            },
        ),
        (
            "matrix-3.example.org",
            {
                **NO_WORKERS,
                "matrix_synapse_role": "workers",
                "matrix_synapse_private_address": "10.0.0.3",
                "matrix_synapse_workers_federation_sender_workers_count": 2,
                "matrix_synapse_workers_pusher_workers_count": 1,
                "matrix_synapse_workers_media_repository_workers_count": 1,
            },
        ),
    ],
    {
        # Data for every host of the cluster.
        "ssh_user": "deploy",
        "_sudo": True,
        "matrix_domain": "example.org",
        # PostgreSQL on the main host, which lets every machine of the cluster in (their
        # private addresses, scram-sha-256); workers hosts reach it at matrix-1's address.
        "matrix_synapse_database_install_postgresql": True,
        "matrix_synapse_database_password": os.environ.get("SYNAPSE_DB_PASSWORD"),
        "matrix_synapse_worker_replication_secret": os.environ.get("SYNAPSE_REPLICATION_SECRET"),
        "matrix_synapse_redis_password": os.environ.get("SYNAPSE_REDIS_PASSWORD"),
        # The main host's identity and secrets, shared by every machine: after a first deploy of
        # matrix-1 alone, its /etc/matrix-synapse/secrets/signing.key, macaroon and form.
        "matrix_synapse_signing_key": os.environ.get("SYNAPSE_SIGNING_KEY"),
        "matrix_synapse_macaroon_secret_key": os.environ.get("SYNAPSE_MACAROON_SECRET_KEY"),
        "matrix_synapse_form_secret": os.environ.get("SYNAPSE_FORM_SECRET"),
    },
)
