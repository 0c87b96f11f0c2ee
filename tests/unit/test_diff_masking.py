"""No diff prints a secret-looking value (issue 9, bug 11)."""

from __future__ import annotations

import pytest
import yaml

from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.settings import parse_settings
from deploys.core.settings.extension import may_hold_a_secret
from deploys.operations.synapse import SECRET_MASK, mask_secret_values
from tests.support.settings_data import make_data


@pytest.mark.parametrize(
    "line",
    [
        "  smtp_pass: hunter2",
        "macaroon_secret_key: 'abc'",
        "- client_secret: abc",
        '    password: "two words"',
        "recaptcha_private_key: abc",
        "as_token: abc",
    ],
)
def test_secret_looking_values_are_masked(line: str) -> None:
    (masked,) = mask_secret_values([line])
    assert masked.endswith(SECRET_MASK)
    assert line.split(":", 1)[1].strip().strip("'\"") not in masked


def test_everything_the_deploy_renders_itself_stays_readable() -> None:
    settings = parse_settings(
        make_data(matrix_synapse_workers_enabled=True, matrix_synapse_database_password="pw")
    )
    for f in desired_state(settings, build_plan(settings, "h")).files.values():
        if not f.secret:
            lines = f.content.decode().splitlines()
            assert mask_secret_values(lines) == lines, f.path


def test_a_pass_through_secret_is_masked_in_the_rendered_homeserver() -> None:
    extension = {"email": {"smtp_host": "mail", "smtp_pass": "hunter2-secret-value"}}
    settings = parse_settings(make_data(matrix_synapse_configuration_extension=extension))
    homeserver = desired_state(settings, build_plan(settings, "h")).files[
        f"{settings.config_dir}/homeserver.yaml"
    ]
    text = homeserver.content.decode()
    assert yaml.safe_load(text)["email"]["smtp_pass"] == "hunter2-secret-value"
    assert "hunter2-secret-value" not in "\n".join(mask_secret_values(text.splitlines()))


@pytest.mark.parametrize(
    "key",
    [
        "smtp_pass",
        "turn_shared_secret",
        "as_token",
        "signing_key",
        "form_secret_path",
        "passfile",
        "server_name",
        "max_upload_size",
        "PrivateTmp",
        "client_credentials",
    ],
)
def test_settings_errors_hide_exactly_what_diffs_mask(key: str) -> None:
    # One rule (deploys.core.secret_keys): a value a diff would print is one an error may echo.
    masked = mask_secret_values([f"{key}: x"]) != [f"{key}: x"]
    assert may_hold_a_secret(key, "x") is masked
