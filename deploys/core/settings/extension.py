"""Extension section: ``matrix_synapse_configuration_extension``, top-level homeserver.yaml keys
passed through verbatim, except the keys this deploy writes itself and the secrets it generates.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from deploys.core.secret_keys import looks_secret
from deploys.core.settings.reader import Reader

KEY: Final = "matrix_synapse_configuration_extension"
# homeserver.yaml keys this deploy writes itself; the pass-through extension may not replace them.
MANAGED_HOMESERVER_KEYS: Final = frozenset(
    {
        "server_name",
        "public_baseurl",
        "report_stats",
        "enable_registration",
        "listeners",
        "database",
        "redis",
        "log_config",
        "signing_key_path",
        "media_store_path",
        "macaroon_secret_key_path",
        "form_secret_path",
        "registration_shared_secret_path",
        "worker_replication_secret",
        "worker_replication_secret_path",
        "instance_map",
        "stream_writers",
        "federation_sender_instances",
        "pusher_instances",
        "run_background_tasks_on",
        "notify_appservices_from_worker",
        "update_user_directory_from_worker",
        "media_instance_running_background_jobs",
        "enable_media_repo",
        "enable_metrics",
        "worker_app",
        "worker_name",
        "worker_listeners",
        "send_federation",
        "start_pushers",
        "notify_appservices",
        "update_user_directory",
        "daemonize",
        "pid_file",
        "trusted_key_servers",
        "suppress_key_server_warning",
    }
)
# Secrets this deploy generates once on the host (render.SECRET_NAMES, files under secrets/) and
# points Synapse at with the managed ``*_path`` key. Inline in the pass-through they would land in
# homeserver.yaml and in every --diff; refused by name, their value never echoed.
GENERATED_SECRET_KEYS: Final = MappingProxyType(
    {
        "macaroon_secret_key": "macaroon_secret_key_path",
        "form_secret": "form_secret_path",
        "registration_shared_secret": "registration_shared_secret_path",
        "worker_replication_secret": "worker_replication_secret_path",
    }
)
HIDDEN: Final = "<hidden>"


def read(r: Reader) -> Mapping[str, Any]:
    value = r.raw(KEY)
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        shown = HIDDEN if may_hold_a_secret(KEY, value) else repr(value)
        r.problems.append(f"{KEY} = {shown}: allowed: a mapping of homeserver.yaml keys")
        return MappingProxyType({})
    for name in sorted(value):
        shown = HIDDEN if may_hold_a_secret(name, value[name]) else repr(value[name])
        if name in GENERATED_SECRET_KEYS:
            r.problems.append(
                f"{KEY}[{name!r}] = {shown}: this deploy generates this secret on the host once "
                f"and sets {GENERATED_SECRET_KEYS[name]}; an inline value would be written to "
                "homeserver.yaml and shown in diffs; allowed: any homeserver.yaml key except "
                f"those the deploy writes itself ({', '.join(sorted(GENERATED_SECRET_KEYS))}, "
                "listeners, database, ...)"
            )
        elif name in MANAGED_HOMESERVER_KEYS:
            r.problems.append(
                f"{KEY}[{name!r}] = {shown}: {name!r} is managed by this deploy; "
                "allowed: keys it does not write itself"
            )
    return MappingProxyType(dict(value))


def may_hold_a_secret(key: str, value: Any) -> bool:
    """True if ``key`` or any key nested in ``value`` looks like it names a credential."""
    if key in GENERATED_SECRET_KEYS or looks_secret(key):
        return True
    if isinstance(value, Mapping):
        return any(may_hold_a_secret(str(k), v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(may_hold_a_secret("", v) for v in value)
    return False
