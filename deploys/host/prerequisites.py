"""Step 3 of the Synapse apply: the account, directories and generated secrets the files need.
Secrets are generated once and never replaced (sessions and tokens rely on them); an empty
secret file counts as missing (``ownership.secret_present``), as the controller's preview says.
Standard library only."""

from __future__ import annotations

import grp
import os
import pwd
import secrets

from . import files, ownership
from .manifest import Account, Manifest
from .systemd import run


def ensure(manifest: Manifest) -> list[str]:
    """Create what the files need; returns the secrets generated on this run."""
    account = manifest.account
    ensure_account(account)
    for d in manifest.directories:
        files.ensure_directory(d.path, d.mode, d.owner, d.group)
    generated = [p for p in manifest.secrets if ensure_secret(p, account.user, account.group)]
    signing_key = manifest.signing_key
    if signing_key and ensure_signing_key(signing_key, account.user, account.group):
        generated.append(signing_key)
    return generated


def ensure_account(account: Account) -> None:
    try:
        grp.getgrnam(account.group)
    except KeyError:
        run(["groupadd", "--system", account.group])
    try:
        pwd.getpwnam(account.user)
    except KeyError:
        run(
            [
                "useradd",
                "--system",
                "--gid",
                account.group,
                "--home-dir",
                account.home,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                account.user,
            ]
        )


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return None


def ensure_secret(path: str, owner: str, group: str) -> bool:
    """Generate a secret once; an existing one is never replaced."""
    if ownership.secret_present(_size(path)):
        return False
    content = secrets.token_urlsafe(48).encode()
    files.write_atomically(path, content, 0o600, *files.ids(owner, group))
    return True


def ensure_signing_key(path: str, owner: str, group: str) -> bool:
    """Synapse's signing key (``ed25519 a_XXXX <seed>``), generated once, never replaced."""
    import base64
    import string

    if ownership.secret_present(_size(path)):
        return False
    key_id = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    content = f"ed25519 {key_id} {seed}\n".encode()
    files.write_atomically(path, content, 0o600, *files.ids(owner, group))
    return True
