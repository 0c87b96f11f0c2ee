"""Synapse's HTTP endpoints, grouped by which processes may serve them (the reverse proxy's input).

Source: Synapse 1.163.2 ``docs/workers.md`` ("synapse.app.generic_worker", "Stream writers",
"synapse.app.media_repository", "Load balancing"); the regexes below are copied from it unchanged
unless a comment says otherwise. Where the docs are silent the comment names the Synapse 1.163.2
code (``synapse/rest/...``) or matrix-docker-ansible-deploy's ``roles/custom/matrix-synapse/vars/
main.yml`` that the entry comes from.

The lists partition the docs' generic-worker list by the specialised worker that takes each part
(sync, room, client reader, federation reader, user directory), so a generic worker serves their
union. Stream-writer endpoints are not in the generic lists: they go to their writer, or to main
when the stream has none (``deploys/routing.py`` decides where each list goes and in which order).
Every regex is matched like nginx does: a search on the decoded path, first match wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

# --- Processes that must be main -------------------------------------------------------------

# Servlets registered on the main process only (synapse/rest/__init__.py, rest/client/room.py,
# account.py, directory.py, register.py) whose paths sit next to worker endpoints. Routed first,
# so no broader worker regex can ever catch them.
MAIN_ONLY: Final = (
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/[^/]+/(forget|upgrade|report)(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/list/room/",
    r"^/_matrix/client/(r0|v3|unstable)/account/3pid/",
    r"^/_matrix/client/(r0|v3|unstable)/register/(email|msisdn)/requestToken$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/logout(/all)?$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/pushers",
    r"^/_matrix/client/(r0|v3|unstable)/refresh$",
    # matrix-docker-ansible-deploy keeps OpenID userinfo on main (its federation server, item 1).
    r"^/_matrix/federation/v1/openid/userinfo$",
)

# "All the following endpoints must go to one single process": main (docs, SSO; only without
# delegated authentication, but harmless with it).
SSO: Final = (
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login/sso/redirect",
    r"^/_synapse/client/pick_idp$",
    r"^/_synapse/client/pick_username",
    r"^/_synapse/client/new_user_consent$",
    r"^/_synapse/client/sso_register$",
    r"^/_synapse/client/oidc/callback$",
    r"^/_synapse/client/saml2/authn_response$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login/cas/ticket$",
)

# --- Any generic worker, split by the specialised worker that takes each part ----------------

# "Sync requests", plus sliding sync (its servlet sits in rest/client/sync.py; MDAD routes it to
# sync workers).
SYNC: Final = (
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
    r"^/_matrix/client/unstable/org\.matrix\.simplified_msc3575/sync$",
)

# "Pagination": every /messages request of one room must reach the same process.
ROOM_MESSAGES: Final = (r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/messages$",)

# Client endpoints addressing one room ("Client API requests" with a room in the path, and "Event
# sending requests"). Room workers take them, hashed by room.
ROOM_CLIENT: Final = (
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/join/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/knock/",
)

# Federation endpoints addressing one room that room workers take (MDAD's
# matrix_synapse_workers_room_worker_federation_endpoints; the regexes are the docs' own).
ROOM_FEDERATION: Final = (
    r"^/_matrix/federation/v1/state_ids/",
    r"^/_matrix/federation/v1/get_missing_events/",
)

# The rest of the generic-worker client list: what client readers take.
CLIENT_READER: Final = (
    # Client API requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    r"^/_matrix/client/unstable/im.nheko.summary/summary/.*$",
    r"^/_matrix/client/v1/room_summary/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/account/3pid$",
    r"^/_matrix/client/(r0|v3|unstable)/account/whoami$",
    r"^/_matrix/client/(r0|v3|unstable)/account/deactivate$",
    r"^/_matrix/client/versions$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/capabilities$",
    r"^/_matrix/client/(r0|v3|unstable)/notifications$",
    # Admin API requests
    r"^/_synapse/admin/v1/rooms/[^/]+$",
    # Encryption requests (the key uploads belong to the device_lists stream, below)
    r"^/_matrix/client/(r0|v3|unstable)/keys/query$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/claim$",
    r"^/_matrix/client/(r0|v3|unstable)/room_keys/",
    # Registration/login requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login$",
    r"^/_matrix/client/(r0|v3|unstable)/register$",
    r"^/_matrix/client/(r0|v3|unstable)/register/available$",
    r"^/_matrix/client/v1/register/m.login.registration_token/validity$",
    r"^/_matrix/client/(r0|v3|unstable)/password_policy$",
    # Event sending requests that name no room
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    # Unstable MSC4140 support. The docs' single regex also takes POST delayed_events/<id>, which
    # only main serves (rest/client/delayed_events.py); that path is in GET_ANYWHERE instead.
    r"^/_matrix/client/unstable/org.matrix.msc4140/delayed_events$",
    r"^/_matrix/client/unstable/org.matrix.msc4140/delayed_events/[^/]+/restart$",
    # Stabilised delegated authentication (matrix_authentication_service.enabled: true)
    r"^/_synapse/mas/",
    # MatrixRTC transports (rest/client/matrixrtc.py, registered on every process; MDAD routes it)
    r"^/_matrix/client/unstable/org\.matrix\.msc4143/rtc/transports$",
)

# "User directory search requests": the user_dir worker, else any generic worker.
USER_DIRECTORY: Final = (r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",)

# "Federation requests" except the room-scoped ones above and the inbound transactions below.
FEDERATION: Final = (
    r"^/_matrix/federation/v1/version$",
    r"^/_matrix/federation/v1/event/",
    r"^/_matrix/federation/v1/state/",
    r"^/_matrix/federation/v1/backfill/",
    r"^/_matrix/federation/v1/publicRooms",
    r"^/_matrix/federation/v1/query/",
    r"^/_matrix/federation/v1/make_join/",
    r"^/_matrix/federation/v1/make_leave/",
    r"^/_matrix/federation/(v1|v2)/send_join/",
    r"^/_matrix/federation/(v1|v2)/send_leave/",
    r"^/_matrix/federation/v1/make_knock/",
    r"^/_matrix/federation/v1/send_knock/",
    r"^/_matrix/federation/(v1|v2)/invite/",
    r"^/_matrix/federation/v1/event_auth/",
    r"^/_matrix/federation/v1/timestamp_to_event/",
    r"^/_matrix/federation/v1/exchange_third_party_invite/",
    r"^/_matrix/federation/v1/user/devices/",
    r"^/_matrix/key/v2/query",
    r"^/_matrix/federation/v1/hierarchy/",
)

# "Inbound federation transaction request": balance by origin, so one remote server's
# transactions reach one process.
FEDERATION_INBOUND: Final = (r"^/_matrix/federation/v1/send/",)

# What a federation reader serves: every federation endpoint a generic worker serves.
FEDERATION_READER: Final = (*ROOM_FEDERATION, *FEDERATION, *FEDERATION_INBOUND)

# Everything a generic worker serves apart from stream-writer endpoints.
GENERIC_WORKER_CLIENT: Final = (
    *SYNC,
    *ROOM_MESSAGES,
    *ROOM_CLIENT,
    *CLIENT_READER,
    *USER_DIRECTORY,
)
GENERIC_WORKER_FEDERATION: Final = FEDERATION_READER

# "GET only" on any worker; other methods go to main. (The stream writers' GET-only rules are
# with their streams, below.)
GET_ANYWHERE: Final = (
    r"^/_synapse/admin/v2/users/[^/]+$",
    # GET reads a delayed event anywhere; POST (update) is main-only
    # (rest/client/delayed_events.py).
    r"^/_matrix/client/unstable/org.matrix.msc4140/delayed_events/[^/]+$",
)

# --- Media ------------------------------------------------------------------------------------

# "synapse.app.media_repository" (its quarantine entries are caught first by the
# quarantined_media_changes stream below). The federation media path must be routed before any
# broad federation-reader rule (matrix-docker-ansible-deploy issue #3918).
MEDIA: Final = (
    r"^/_matrix/media/",
    r"^/_matrix/client/v1/media/",
    r"^/_matrix/federation/v1/media/",
    r"^/_synapse/admin/v1/purge_media_cache$",
    r"^/_synapse/admin/v1/room/.*/media.*$",
    r"^/_synapse/admin/v1/user/.*/media.*$",
    r"^/_synapse/admin/v1/media/.*$",
    r"^/_synapse/admin/v1/quarantine_media/.*$",
    r"^/_synapse/admin/v1/users/.*/media$",
)

# --- Stream writers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamEndpoints:
    """The endpoints of one stream.

    Attributes:
        writer: every method goes to the stream's writer (main when it has none); the write
            handlers fail (500) on any other process.
        get_anywhere: GET and HEAD may go to any generic worker; other methods as ``writer``.
    """

    writer: tuple[str, ...] = ()
    get_anywhere: tuple[str, ...] = ()

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.writer, *self.get_anywhere)


# "Stream writers" (docs), one entry per row of deploys.core.worker_types.STREAMS.
STREAM_ENDPOINTS: Final[Mapping[str, StreamEndpoints]] = MappingProxyType(
    {
        "events": StreamEndpoints(),  # persisters serve no client endpoint
        "typing": StreamEndpoints(
            writer=(r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/typing",),
        ),
        "to_device": StreamEndpoints(
            writer=(r"^/_matrix/client/(r0|v3|unstable)/sendToDevice/",),
        ),
        "account_data": StreamEndpoints(
            get_anywhere=(
                r"^/_matrix/client/(r0|v3|unstable)/.*/tags",
                r"^/_matrix/client/(r0|v3|unstable)/.*/account_data",
            ),
        ),
        # POST /receipt fails on a non-writer although the docs say "any worker"
        # (element-hq/synapse#17243).
        "receipts": StreamEndpoints(
            writer=(
                r"^/_matrix/client/(r0|v3|unstable)/rooms/.*/receipt",
                r"^/_matrix/client/(r0|v3|unstable)/rooms/.*/read_markers",
            ),
        ),
        "presence": StreamEndpoints(
            get_anywhere=(r"^/_matrix/client/(api/v1|r0|v3|unstable)/presence/",),
        ),
        "push_rules": StreamEndpoints(
            get_anywhere=(r"^/_matrix/client/(api/v1|r0|v3|unstable)/pushrules/",),
        ),
        "device_lists": StreamEndpoints(
            writer=(
                r"^/_matrix/client/(r0|v3)/delete_devices$",
                r"^/_matrix/client/(api/v1|r0|v3|unstable)/devices(/|$)",
                r"^/_matrix/client/(r0|v3|unstable)/keys/upload",
                r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/device_signing/upload$",
                r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/signatures/upload$",
            ),
        ),
        # Not in the docs: MDAD's list (rest/client/thread_subscriptions.py, msc4306_enabled only).
        "thread_subscriptions": StreamEndpoints(
            writer=(
                r"^/_matrix/client/unstable/io\.element\.msc4306/rooms/.*/thread/.*/subscription$",
                r"^/_matrix/client/unstable/io\.element\.msc4308/thread_subscriptions$",
            ),
        ),
        # The writer must load the media repository (these servlets exist only there).
        "quarantined_media_changes": StreamEndpoints(
            writer=(
                r"^/_synapse/admin/v1/quarantine_media/.*$",
                r"^/_synapse/admin/v1/room/.*/media/quarantine$",
                r"^/_synapse/admin/v1/user/.*/media/quarantine$",
                r"^/_synapse/admin/v1/media/quarantine/.*$",
                r"^/_synapse/admin/v1/media/unquarantine/.*$",
            ),
        ),
    }
)
