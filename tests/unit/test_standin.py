"""The stand-in Synapse reads exactly what PyYAML reads from every config the deploy renders, and
refuses by name what it does not handle (it runs without PyYAML on the test hosts)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import yaml

from deploys.core.plan import build_plan
from deploys.core.render import desired_state
from deploys.core.settings import parse_settings
from tests.support.deploying import STANDIN
from tests.support.settings_data import make_data

_spec = importlib.util.spec_from_file_location("standin_synapse", STANDIN)
assert _spec and _spec.loader
standin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(standin)

EXTENSION = {
    "max_upload_size": "100M",
    "experimental_features": {"msc3266_enabled": True},
    "x": [{"a": 1, "b": [1, {"c": None}]}, "b", "it's", "a: b", "#x", 'q"uote', "08", "0644"],
    "y": ["1.5", "true", "", [], {}],
    "url_preview_ip_range_blacklist": ["127.0.0.0/8", "::1/128"],
    "email": {"smtp_host": "mail", "notif_from": "Your %(app)s homeserver <noreply@example.org>"},
}
VARIANTS: list[dict[str, Any]] = [
    {},
    {"matrix_synapse_configuration_extension": EXTENSION},
    {"matrix_synapse_redis_path": "/run/redis/redis.sock"},
    {"matrix_synapse_bind_addresses": ["::1", "10.0.0.5"]},
]


@pytest.mark.parametrize(
    "preset", ["one-of-each", "little-federation-helper", "specialized-workers"]
)
@pytest.mark.parametrize("variant", range(len(VARIANTS)))
def test_the_standin_parses_every_rendered_config_like_pyyaml(preset: str, variant: int) -> None:
    data = make_data(
        matrix_synapse_workers_enabled=True,
        matrix_synapse_workers_preset=preset,
        **VARIANTS[variant],
    )
    settings = parse_settings(data)
    files = desired_state(settings, build_plan(settings, "h")).files
    yaml_files = [f for path, f in files.items() if path.endswith(".yaml")]
    assert len(yaml_files) > 3
    for f in yaml_files:
        text = f.content.decode()
        assert standin.parse_yaml(text) == yaml.safe_load(text), f.path


@pytest.mark.parametrize(
    "text",
    ["{not: [yaml", "a: &x 1", "a: |\n  x\n", "a: 'x\n  y'", "a: b\n c", "\ta: 1", "a: !!str x"],
)
def test_the_standin_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(standin.ConfigError):
        standin.parse_yaml(text)


def test_the_standin_rereads_its_log_config_on_sighup_and_survives_a_bad_one(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = parse_settings(make_data(matrix_synapse_log_level="DEBUG"))
    files = desired_state(settings, build_plan(settings, "h")).files
    log_yaml = tmp_path / "log.yaml"
    log_yaml.write_bytes(files[f"{settings.config_dir}/log.yaml"].content)
    standin.reload_log_config(str(log_yaml))
    assert f"reloaded log config {log_yaml} (root level DEBUG)" in capsys.readouterr().err
    log_yaml.write_text("root: [unterminated\n")
    standin.reload_log_config(str(log_yaml))  # logged, not raised: the process keeps running
    assert f"cannot reload log config {log_yaml}" in capsys.readouterr().err
