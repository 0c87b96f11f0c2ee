"""The program shipped to and run on the host. Standard library only; imports inside are relative.
Every module here travels as the package ``host/`` in the archive; the controller imports the
same modules for the rules both sides need.

Programs:
    apply      the Synapse apply (``python3 -m host.apply STAGE``): batch + journal, secrets,
               checks, restart waves (drain, systemd, readiness)
    batch      a batch of files applied atomically under a lock (``python3 -m host.batch STAGE``)
    synapse_check  loads Synapse configs (run with the Synapse virtualenv's python)

Steps of apply:
    manifest   what the controller asks for: typed dataclasses with a checked JSON codec
    files      atomic write, undo (rollback), attributes, removal
    journal    the changes a run owes until its services are ready
    checks     which checks a run must pass before any process sees its files
    prerequisites  account, directories, generated secrets
    systemd    read unit states, run actions, report failures
    readiness  wait until every unit a wave (re)started is ready
    drain      take processes out of nginx's routing before they stop, put them back after

Rules both sides use:
    ownership  which files are ours, stale, left alone; is a path under a directory; secret present
    units      unit names, list-units parsing, change records
    restarts   "what changed" -> ordered restart waves (the one planner, for the preview too)
"""
