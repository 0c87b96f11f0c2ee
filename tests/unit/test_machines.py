"""One machine is one inventory host (issue 9, bug 6)."""

from __future__ import annotations

import pytest

from deploys.core import machines
from deploys.core.settings import SettingsError


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machines, "_claims", {})


def test_two_hosts_on_one_machine_are_refused_whatever_their_directories() -> None:
    # Before: the key was (machine-id, config dir), so different config dirs passed although
    # both hosts manage the same matrix-synapse* units.
    machines.claim_machine("alias-a", "0123")
    with pytest.raises(SettingsError) as error:
        machines.claim_machine("alias-b", "0123")
    assert "alias-a" in str(error.value) and "alias-b" in str(error.value)
    assert "0123" in str(error.value)


def test_an_empty_machine_id_is_refused_naming_the_host() -> None:
    # Before: an empty machine-id skipped the check silently.
    with pytest.raises(SettingsError, match="alias-a has an empty /etc/machine-id"):
        machines.claim_machine("alias-a", "")


def test_different_machines_and_the_same_host_twice_are_fine() -> None:
    machines.claim_machine("a", "1")
    machines.claim_machine("b", "2")
    machines.claim_machine("a", "1")  # pyinfra may load the deploy file again for one host
