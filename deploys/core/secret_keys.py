"""Which setting names hold credentials: one rule for settings errors (values never echoed) and
for diffs (values masked). Pure."""

from __future__ import annotations

import re
from typing import Final

# Synapse's own names: smtp_pass, macaroon_secret_key, as_token, client_secret,
# recaptcha_private_key, worker_replication_secret, ... and any *credential*.
_CREDENTIAL: Final = re.compile(r"pass|secret|token|credential|private_key|_key$", re.IGNORECASE)


def looks_secret(key: str) -> bool:
    """True if ``key`` names a credential; a path or file holding one (``*_path``, ``passfile``)
    is not itself secret."""
    key = key.strip().lower()
    return bool(_CREDENTIAL.search(key)) and not key.endswith(("path", "file"))
