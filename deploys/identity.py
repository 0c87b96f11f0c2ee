"""One machine is one inventory host: refuse two inventory hosts that are the same machine.

pyinfra loads the deploy file once per host in one process, so a module-level registry sees every
host of the run before any operation executes; the second claim of a machine fails the run there.
"""

from __future__ import annotations

from deploys.settings import SettingsError

_claims: dict[tuple[str, str], str] = {}


def claim_machine(host_name: str, machine_id: str, config_dir: str) -> None:
    """Record that ``host_name`` deploys ``config_dir`` on the machine ``machine_id``.

    Raises:
        SettingsError: another inventory host of this run already claimed the same machine and
            config directory (their cleanups would delete each other's workers).
    """
    if not machine_id:  # no identity to compare (some containers): nothing to refuse
        return
    key = (machine_id, config_dir)
    other = _claims.setdefault(key, host_name)
    if other != host_name:
        raise SettingsError([
            f"inventory hosts {other} and {host_name} are the same machine (machine-id "
            f"{machine_id}) with the same {config_dir}; allowed: one inventory host per machine "
            "(its plan owns every worker there)"])  # fmt: skip
