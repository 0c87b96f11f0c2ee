"""One machine is one inventory host: refuse two inventory hosts that are the same machine.

pyinfra loads the deploy file once per host in one process, so a module-level registry sees every
host of the run before any operation executes; the second claim of a machine fails the run there.
A machine is known by ``/etc/machine-id``: unit names (``matrix-synapse*``) are the same whatever
the config or systemd directory, so two inventory hosts on one machine would each disable the
other's workers on cleanup, whichever directories they use.
"""

from __future__ import annotations

from deploys.core.settings import SettingsError

_claims: dict[str, str] = {}


def claim_machine(host_name: str, machine_id: str) -> None:
    """Record that ``host_name`` deploys to the machine ``machine_id``.

    Raises:
        SettingsError: the host has no machine-id to tell it apart, or another inventory host of
            this run already claimed the same machine.
    """
    if not machine_id:
        raise SettingsError(
            [
                f"inventory host {host_name} has an empty /etc/machine-id; allowed: a machine "
                "with a machine-id (run `systemd-machine-id-setup` on it), so that two inventory "
                "hosts on one machine can be told apart"
            ]
        )
    other = _claims.setdefault(machine_id, host_name)
    if other != host_name:
        raise SettingsError(
            [
                f"inventory hosts {other} and {host_name} are the same machine (machine-id "
                f"{machine_id}); allowed: one inventory host per machine (its plan owns every "
                "matrix-synapse unit there, whatever its config or systemd directory)"
            ]
        )
