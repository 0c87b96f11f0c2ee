# Example production inventory: `pyinfra inventories/prod.py deploys/synapse.py`.
#
# One machine is one inventory host; never list a machine twice to split its workers (the plan
# owns every worker of a host, and cleanup removes what the plan does not have). Several hosts
# deploy in parallel; cap it with `--parallel N`. Preview with `--dry --diff`.
#
# Every host reads group_data/all.py (defaults), then group_data/prod.py if you create it (this
# file's group), then the per-host data below, then `--data key=value`.

synapse_servers = (
    [
        (
            "matrix.example.org",
            {
                # How pyinfra connects (any pyinfra SSH setting works here).
                "ssh_user": "deploy",
                "_sudo": True,
                # The homeserver name: the part after ':' in user IDs.
                "matrix_domain": "example.org",
                # 130 generic workers plus the one-of-each stream writers and helpers.
                "matrix_synapse_workers_enabled": True,
                "matrix_synapse_workers_preset": "one-of-each",
                "matrix_synapse_workers_generic_workers_count": 130,
            },
        ),
    ],
    {
        # Data for every host of this group. Keep secrets out of the repository, e.g.:
        #   "matrix_synapse_database_password": os.environ["SYNAPSE_DB_PASSWORD"],
        "matrix_synapse_database_host": "127.0.0.1",
    },
)
