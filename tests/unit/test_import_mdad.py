"""Import from matrix-docker-ansible-deploy (MDAD): vars files modelled on the playbook's documented
examples (examples/vars.yml, docs/configuring-playbook-synapse.md, docs/configuring-playbook-
external-postgres.md, the worker-list example in roles/custom/matrix-synapse/defaults/main.yml)
become group_data that pyinfra loads, ``parse_settings`` accepts and the plan turns into the
workers MDAD runs for them; every input key is carried over or listed with why; the CLI's exit
codes and streams; secrets only where the operator asked for them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from deploys.core.mdad_import import ImportFailed, import_vars, load_vars, render_group_data
from deploys.core.plan import WorkerPlan, build_plan
from deploys.core.settings import REPO_ROOT, Settings, load_defaults, parse_settings

# examples/vars.yml as an operator fills it in.
BASE = """\
---
matrix_domain: example.com
matrix_homeserver_implementation: synapse
matrix_homeserver_generic_secret_key: 'Ga3oozu8Iey5ahmoo0eiJ2ook0aeph3ahN'
matrix_playbook_reverse_proxy_type: playbook-managed-traefik
postgres_connection_password: 'Ohqu7eeR0pai5Xie'
"""
GENERIC_SECRET = "Ga3oozu8Iey5ahmoo0eiJ2ook0aeph3ahN"
POSTGRES_PASSWORD = "Ohqu7eeR0pai5Xie"

# The nine stream writers every preset but little-federation-helper runs (MDAD's
# matrix_synapse_workers_known_stream_writer_stream_types, thread_subscriptions at 0).
NINE_WRITERS = {
    "events": 1,
    "typing": 1,
    "to_device": 1,
    "account_data": 1,
    "receipts": 1,
    "presence": 1,
    "push_rules": 1,
    "device_lists": 1,
    "quarantined_media_changes": 1,
}
SINGLETONS = {"pusher": 1, "federation_sender": 1, "media_repository": 1}
SINGLETONS |= {"appservice": 1, "user_dir": 1, "background": 1}


# pyinfra's group_data loader (it records the file it runs on the current state); prints the
# "synapse" group's data as a Python literal.
LOAD_GROUP_DATA = """
import sys
from types import SimpleNamespace
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import _get_group_data
with ctx_state.use(SimpleNamespace(current_exec_filename=None)):
    print(repr(_get_group_data(sys.argv[1])["synapse"]))
"""


def run_import(text: str, tmp_path: Path) -> tuple[str, dict[str, Any], Settings, WorkerPlan]:
    """The CLI's output for ``text``, loaded as pyinfra loads group_data, parsed and planned."""
    source = tmp_path / "vars.yml"
    source.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "deploys.import_mdad", str(source)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    group_dir = tmp_path / "group_data"
    group_dir.mkdir()
    (group_dir / "synapse.py").write_text(result.stdout)
    # pyinfra's own group_data loader, in a child process: importing pyinfra_cli monkey-patches
    # the stdlib for gevent, which in pytest's process would change subprocess, socket and
    # threading for every test collected after this module (tests/conftest.py refuses that).
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_GROUP_DATA, str(group_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    group = ast.literal_eval(loaded.stdout)
    data = load_defaults()
    data.update(group)
    settings = parse_settings(data)
    return result.stdout, group, settings, build_plan(settings, "matrix.example.com")


def flat(out: str) -> str:
    """The output's comments as one line of prose (they wrap at 99 columns)."""
    return " ".join(line.lstrip("#").strip() for line in out.splitlines())


def counts(plan: WorkerPlan) -> tuple[dict[str, int], dict[str, int]]:
    """Workers per type (stream writers apart) and stream writers per stream."""
    types = Counter(w.worker_type.key for w in plan.workers if w.stream is None)
    streams = Counter(w.stream.name for w in plan.workers if w.stream is not None)
    return dict(types), dict(streams)


def accounted(text: str) -> tuple[set[str], set[str]]:
    """(input keys carried over, input keys listed as not carried over), by top-level name."""
    result = import_vars(load_vars(text, "vars.yml"))
    carried = {s for c in result.settings.values() for s in c.sources}
    left = {n.key.partition("[")[0] for n in result.not_carried}
    return carried, left


# -- presets and counts: the plan runs what MDAD runs -------------------------------------------


@pytest.mark.parametrize(
    ("preset", "types", "total"),
    [
        # docs/configuring-playbook-synapse.md, "Worker presets"; 16, 19 and 1 workers.
        ("one-of-each", {"generic": 1, **SINGLETONS}, 16),
        (
            "specialized-workers",
            {"room": 1, "sync": 1, "client_reader": 1, "federation_reader": 1, **SINGLETONS},
            19,
        ),
        ("little-federation-helper", {"federation_sender": 1}, 1),
    ],
)
def test_a_preset_plans_the_workers_mdad_runs_for_it(
    tmp_path: Path, preset: str, types: dict[str, int], total: int
) -> None:
    text = BASE + f"matrix_synapse_workers_enabled: true\nmatrix_synapse_workers_preset: {preset}\n"
    _out, group, settings, plan = run_import(text, tmp_path)
    assert group["matrix_synapse_workers_enabled"] is True
    assert group["matrix_synapse_workers_preset"] == preset
    assert settings.domain == "example.com"
    assert counts(plan) == (types, {} if preset == "little-federation-helper" else NINE_WRITERS)
    assert len(plan.workers) == total


def test_custom_counts_on_a_preset_plan_those_counts(tmp_path: Path) -> None:
    # "start with one of these presets as a base and configure matrix_synapse_workers_*_count".
    text = BASE + textwrap.dedent("""\
        matrix_synapse_workers_enabled: true
        matrix_synapse_workers_preset: specialized-workers
        matrix_synapse_workers_room_workers_count: 4
        matrix_synapse_workers_sync_workers_count: 2
        matrix_synapse_workers_client_reader_workers_count: 2
        matrix_synapse_workers_federation_sender_workers_count: 3
        matrix_synapse_workers_media_repository_workers_count: 0
        matrix_synapse_workers_stream_writer_events_stream_workers_count: 4
        matrix_synapse_workers_stream_writer_thread_subscriptions_stream_workers_count: 1
        matrix_synapse_workers_generic_workers_port_range_start: 18111
    """)
    _, group, settings, plan = run_import(text, tmp_path)
    assert group["matrix_synapse_workers_room_workers_count"] == 4
    assert group["matrix_synapse_workers_generic_workers_port_range_start"] == 18111
    types, streams = counts(plan)
    assert types == {
        "room": 4,
        "sync": 2,
        "client_reader": 2,
        "federation_reader": 1,
        "pusher": 1,
        "federation_sender": 3,
        "appservice": 1,
        "user_dir": 1,
        "background": 1,
    }
    assert streams == {**NINE_WRITERS, "events": 4, "thread_subscriptions": 1}
    assert len(plan.workers) == 16 + 13  # types, then 9 writers + 3 more events + 1 thread
    assert settings.workers.port_starts[
        "matrix_synapse_workers_generic_workers_port_range_start"
    ] == (18111)


# The example list in roles/custom/matrix-synapse/defaults/main.yml (fields as MDAD writes them).
ENABLED_LIST = """\
matrix_synapse_workers_enabled: true
matrix_synapse_workers_generic_workers_count: 6
matrix_synapse_workers_enabled_list:
  - { 'id': 'generic-worker-0', 'name': 'matrix-synapse-worker-generic-0', 'type': 'generic_worker', 'app': 'generic_worker', 'port': 18111, 'metrics_port': 19111, 'webserving': true }
  - { 'id': 'generic-worker-1', 'name': 'matrix-synapse-worker-generic-1', 'type': 'generic_worker', 'app': 'generic_worker', 'port': 18112, 'metrics_port': 19112, 'webserving': true }
  - { 'id': 'stream-writer-0-events', 'name': 'matrix-synapse-worker-stream-writer-0-events', 'type': 'stream_writer', 'app': 'generic_worker', 'stream_writer_stream': 'events', 'port': 0, 'replication_port': 25011, metrics_port: 19211, 'webserving': false }
  - { 'id': 'stream-writer-1-typing', 'name': 'matrix-synapse-worker-stream-writer-1-typing', 'type': 'stream_writer', 'app': 'generic_worker', 'stream_writer_stream': 'typing', 'port': 20012, 'replication_port': 25012, metrics_port: 19212, 'webserving': true }
  - { 'id': 'pusher-0', 'name': 'matrix-synapse-worker-pusher-0', 'type': 'pusher', 'app': 'pusher', 'port': 0, 'metrics_port': 19200, 'webserving': false }
  - { 'id': 'appservice-0', 'name': 'matrix-synapse-worker-appservice-0', 'type': 'appservice', 'port': 0, 'metrics_port': 19300, 'webserving': false }
  - { 'id': 'federation-sender-0', 'name': 'matrix-synapse-worker-federation-sender-0', 'type': 'federation_sender', 'port': 0, 'metrics_port': 19400, 'webserving': false }
  - { 'id': 'media-repository-0', 'name': 'matrix-synapse-worker-media-repository-0', 'type': 'media_repository', 'port': 18551, 'metrics_port': 19551, 'webserving': true, 'cpus': 2 }
"""  # noqa: E501 - MDAD's own one-line entries


def test_an_enabled_list_plans_exactly_those_workers_and_the_counts_are_left(
    tmp_path: Path,
) -> None:
    out, group, _, plan = run_import(BASE + ENABLED_LIST, tmp_path)
    names = [w.name for w in plan.workers]
    assert names == [
        "matrix-synapse-worker-generic-0",
        "matrix-synapse-worker-generic-1",
        "matrix-synapse-worker-stream-writer-0-events",
        "matrix-synapse-worker-stream-writer-1-typing",
        "matrix-synapse-worker-pusher-0",
        "matrix-synapse-worker-appservice-0",
        "matrix-synapse-worker-federation-sender-0",
        "matrix-synapse-worker-media-repository-0",
    ]
    typing = plan.worker("matrix-synapse-worker-stream-writer-1-typing")
    assert {(lst.purpose, lst.port) for lst in typing.listeners} == {
        ("http", 20012),
        ("replication", 25012),
        ("metrics", 19212),
    }
    assert plan.shared.stream_writers["events"] == ("matrix-synapse-worker-stream-writer-0-events",)
    # MDAD ignores counts next to a hand-written list: so does the import, saying so.
    assert "matrix_synapse_workers_generic_workers_count" not in group
    assert "MDAD ignores every count" in flat(out)
    # app is not a Synapse module name in MDAD; an unknown field is listed, not dropped silently.
    assert all("app" not in e for e in group["matrix_synapse_workers_enabled_list"])
    assert "matrix_synapse_workers_enabled_list[7].cpus = 2" in out


def test_counts_while_workers_are_off_are_left_with_why(tmp_path: Path) -> None:
    text = BASE + "matrix_synapse_workers_generic_workers_count: 4\n"
    out, group, settings, plan = run_import(text, tmp_path)
    assert "matrix_synapse_workers_generic_workers_count" not in group
    assert "MDAD runs no workers while matrix_synapse_workers_enabled is false" in flat(out)
    assert not settings.workers.enabled and plan.workers == ()


# -- database -----------------------------------------------------------------------------------


def test_mdads_own_postgres_becomes_an_installed_postgres_with_its_password(
    tmp_path: Path,
) -> None:
    out, _group, settings, _ = run_import(BASE, tmp_path)
    assert settings.database.install_postgresql is True
    assert settings.database.password == POSTGRES_PASSWORD
    assert settings.database.host == "127.0.0.1"
    # Where it came from is written next to it.
    lines = out.splitlines()
    at = lines.index(f"matrix_synapse_database_password = {POSTGRES_PASSWORD!r}")
    assert lines[at - 1] == "# from postgres_connection_password"


def test_an_external_postgres_carries_over_as_documented(tmp_path: Path) -> None:
    # docs/configuring-playbook-external-postgres.md, plus MDAD's pool keys.
    text = BASE + textwrap.dedent("""\
        postgres_enabled: false
        matrix_synapse_database_host: "db.example.com"
        matrix_synapse_database_port: 6432
        matrix_synapse_database_user: "synapse_user"
        matrix_synapse_database_password: "Ahc0ohs9quie"
        matrix_synapse_database_database: "synapse_db"
        matrix_synapse_database_cp_min: 5
        matrix_synapse_database_cp_max: 10
    """)
    out, _group, settings, _ = run_import(text, tmp_path)
    db = settings.database
    assert (db.host, db.port, db.user, db.name) == (
        "db.example.com",
        6432,
        "synapse_user",
        "synapse_db",
    )
    assert db.password == "Ahc0ohs9quie"
    assert db.install_postgresql is False
    assert (db.cp_min, db.main_cp_max, db.workers_cp_max) == (5, 10, 10)
    # The superuser password of MDAD's own PostgreSQL is not used for an external server.
    assert POSTGRES_PASSWORD not in out
    assert "- postgres_connection_password = <hidden>" in out


def test_a_templated_database_password_is_left_hidden_and_install_waits_for_one(
    tmp_path: Path,
) -> None:
    text = BASE.replace(
        f"postgres_connection_password: '{POSTGRES_PASSWORD}'",
        'matrix_synapse_database_password: "{{ vault_synapse_db_password }}"',
    )
    out, group, settings, _ = run_import(text, tmp_path)
    assert "matrix_synapse_database_password" not in group
    assert "- matrix_synapse_database_password = <hidden>" in out
    assert "vault_synapse_db_password" not in out
    assert settings.database.install_postgresql is False
    assert "input holds no literal database password" in flat(out)


# -- what cannot be carried over ----------------------------------------------------------------

MIXED = BASE + textwrap.dedent("""\
    matrix_synapse_workers_enabled: true
    matrix_synapse_workers_generic_workers_count: "{{ groups['matrix_servers'] | length * 4 }}"
    matrix_synapse_max_upload_size_mb: 200
    matrix_synapse_log_level: warning
    matrix_synapse_presence_enabled: false
    matrix_synapse_container_extra_arguments: ['--cpus=2']
    matrix_synapse_container_labels_traefik_hostname: matrix.example.com
    matrix_client_element_enabled: true
    matrix_synapse_turn_shared_secret: !vault |
      $ANSIBLE_VAULT;1.1;AES256
      6231363039
    matrix_synapse_admin_contact: !unsafe 'mailto:{{admin}}@example.com'
    matrix_synapse_configuration_extension_yaml: |
      url_preview_enabled: false
      rc_message:
        per_second: 1
        burst_count: 50
      listeners: []
      form_secret: Uthoh2aiY8
      email:
        smtp_pass: Eih0ahNg5sh
      public_baseurl: "https://{{ matrix_server_fqn_matrix }}/"
    some_custom_setting: 7
""")


def test_every_input_key_is_carried_over_or_listed_with_why(tmp_path: Path) -> None:
    for text in (
        MIXED,
        BASE + ENABLED_LIST,
        BASE + "matrix_synapse_workers_preset: room-workers\n",
    ):
        keys = set(load_vars(text, "vars.yml"))
        carried, left = accounted(text)
        assert carried | left == keys
    out, _group, settings, plan = run_import(MIXED, tmp_path)
    listed = {
        line.split(" = ")[0].removeprefix("#   - ")
        for line in out.splitlines()
        if line.startswith("#   - ")
    }
    assert listed == {
        "matrix_homeserver_implementation",
        "matrix_homeserver_generic_secret_key",
        "matrix_playbook_reverse_proxy_type",
        "matrix_synapse_workers_generic_workers_count",
        "matrix_synapse_container_extra_arguments",
        "matrix_synapse_container_labels_traefik_hostname",
        "matrix_client_element_enabled",
        "matrix_synapse_turn_shared_secret",
        "matrix_synapse_configuration_extension_yaml['listeners']",
        "matrix_synapse_configuration_extension_yaml['form_secret']",
        "matrix_synapse_configuration_extension_yaml['public_baseurl']",
        "some_custom_setting",
    }
    # A Jinja value is listed with its expression; the preset's count stands.
    assert (
        "#   - matrix_synapse_workers_generic_workers_count = "
        "\"{{ groups['matrix_servers'] | length * 4 }}\"" in out
    )
    assert counts(plan)[0]["generic"] == 1
    # What maps went where it belongs.
    assert settings.log_level == "WARNING"
    assert settings.configuration_extension == {
        "max_upload_size": "200M",
        "presence": {"enabled": False},
        "admin_contact": "mailto:{{admin}}@example.com",  # !unsafe: Ansible's literal string
        "url_preview_enabled": False,
        "rc_message": {"per_second": 1, "burst_count": 50},
        "email": {"smtp_pass": "Eih0ahNg5sh"},
    }
    assert settings.nginx.client_max_body_size == "200M"
    assert settings.public_baseurl == "https://matrix.example.com/"


def test_secrets_left_behind_are_never_shown_and_those_carried_are_named(tmp_path: Path) -> None:
    out, *_ = run_import(MIXED, tmp_path)
    for hidden in (GENERIC_SECRET, "Uthoh2aiY8", "ANSIBLE_VAULT", "6231363039"):
        assert hidden not in out
    assert "#   - matrix_synapse_turn_shared_secret = !vault <hidden>" in out
    assert "#   - matrix_synapse_configuration_extension_yaml['form_secret'] = <hidden>" in out
    # Carried-over secrets are printed (the operator asked) and named at the top.
    assert "Eih0ahNg5sh" in out and POSTGRES_PASSWORD in out
    header = " ".join(line for line in out.splitlines()[:8] if line.startswith("#"))
    assert "matrix_synapse_database_password" in header
    assert "matrix_synapse_configuration_extension" in header


def test_the_output_is_python_pyinfra_loads_with_nothing_but_settings(tmp_path: Path) -> None:
    out, group, _, _ = run_import(MIXED, tmp_path)
    compile(out, "synapse.py", "exec")
    assert all(k == "matrix_domain" or k.startswith("matrix_synapse_") for k in group)


# -- the CLI --------------------------------------------------------------------------------------


def cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploys.import_mdad", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_says_where_the_secrets_are(tmp_path: Path) -> None:
    source = tmp_path / "vars.yml"
    source.write_text(BASE)
    result = cli(str(source))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    number = lines.index(f"matrix_synapse_database_password = {POSTGRES_PASSWORD!r}") + 1
    assert f"matrix_synapse_database_password (line {number})" in result.stderr
    assert POSTGRES_PASSWORD not in result.stderr
    assert "not carried over" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (f"postgres_connection_password: '{POSTGRES_PASSWORD}\nmatrix_domain: [", "not valid YAML"),
        (f"- postgres_connection_password: {POSTGRES_PASSWORD}\n", "found a list"),
        ("", "found an empty file"),
        (b"matrix_domain: \xff\xfe\n", "not UTF-8 text"),
    ],
)
def test_cli_refuses_unreadable_input_in_one_line_without_values(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    source = tmp_path / "vars.yml"
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        source.write_text(content)
    result = cli(str(source))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"python -m deploys.import_mdad: error: {source}: ")
    assert message in result.stderr
    assert POSTGRES_PASSWORD not in result.stderr


def test_cli_refuses_a_directory_and_missing_arguments(tmp_path: Path) -> None:
    result = cli(str(tmp_path))
    assert (result.returncode, result.stdout) == (1, "")
    assert "is a directory" in result.stderr
    assert cli().returncode == 2


def test_cli_reports_a_result_the_deploy_refuses_and_prints_it_anyway(tmp_path: Path) -> None:
    # MDAD refuses generic workers next to specialised ones too (validate_config.yml).
    source = tmp_path / "vars.yml"
    source.write_text(
        BASE
        + "matrix_synapse_workers_enabled: true\n"
        + "matrix_synapse_workers_preset: specialized-workers\n"
        + "matrix_synapse_workers_generic_workers_count: 2\n"
    )
    result = cli(str(source))
    assert result.returncode == 1
    assert "matrix_synapse_workers_generic_workers_count = 2" in result.stdout
    assert "# REFUSED by this deploy's settings or plan" in result.stdout
    assert "generic workers cannot be mixed" in result.stderr
    assert "this deploy refuses the result" in result.stderr
    assert POSTGRES_PASSWORD not in result.stderr


def test_load_vars_names_the_position_of_a_yaml_error_but_not_the_line() -> None:
    with pytest.raises(ImportFailed) as e:
        load_vars(f"a: 1\nsecret_pass: '{POSTGRES_PASSWORD}\n  b: [\n", "v.yml")
    assert "v.yml: not valid YAML:" in str(e.value)
    assert "line " in str(e.value)
    assert POSTGRES_PASSWORD not in str(e.value)


def test_a_renamed_or_unknown_preset_is_left_with_the_allowed_names() -> None:
    result = import_vars(load_vars(BASE + "matrix_synapse_workers_preset: room-workers\n", "v"))
    (left,) = [n for n in result.not_carried if n.key == "matrix_synapse_workers_preset"]
    assert "renamed this preset to specialized-workers" in left.reason
    assert "one-of-each" in left.reason
    assert "matrix_synapse_workers_preset" not in result.settings
    assert render_group_data(result, "v").count("matrix_synapse_workers_preset") == 1


EDGES = """\
matrix_domain: "{{ lookup('env', 'DOMAIN') }}"
matrix_synapse_workers_enabled: "{{ true }}"
matrix_synapse_workers_generic_workers_count: 3
matrix_synapse_configuration_extension_yaml: |
  foo: {{ bar }}
  smtp_pass: Oa6ooghe
matrix_synapse_database_host: matrix-postgres
postgres_enabled: true
released: 2024-01-01
"""


def test_values_it_cannot_read_are_listed_and_a_missing_domain_is_refused(tmp_path: Path) -> None:
    carried, left = accounted(EDGES)
    assert carried | left == set(load_vars(EDGES, "v"))
    source = tmp_path / "vars.yml"
    source.write_text(EDGES)
    result = cli(str(source))
    assert result.returncode == 1
    out = flat(result.stdout)
    assert "- matrix_domain = \"{{ lookup('env', 'DOMAIN') }}\" a Jinja template" in out
    assert "depends on matrix_synapse_workers_enabled, which is not carried over" in out
    # Unquoted Jinja breaks the YAML text; the text holds a credential, so it is not shown.
    assert "- matrix_synapse_configuration_extension_yaml = <hidden> its YAML does not parse" in out
    assert "Oa6ooghe" not in result.stdout + result.stderr
    assert "MDAD's own PostgreSQL container" in out
    assert "- released = datetime.date(2024, 1, 1) not a Synapse setting" in out
    assert "set matrix_domain" in result.stderr
    assert "matrix_domain = None: allowed: the homeserver name" in result.stderr
    compile(result.stdout, "synapse.py", "exec")
