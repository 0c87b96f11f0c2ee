"""The cached Debian trees test hosts boot from: the base recipe (debootstrap) and derived trees
(base plus setup commands), each built once under a file lock and keyed by its recipe.

Part of the test-host harness (``tests/support/testhost.py`` is the entry point)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.testhost_cgroups import (
    _kill_cgroup_leftovers,
    _live_states,
    _remove_cgroups,
    _spawn_in_cgroup,
)
from tests.support.testhost_env import _NAME_RE, TestHostError, _run, cache_dir, debian_mirror

log = logging.getLogger(__name__)

# Bump when the base recipe below changes: the cache is keyed by it.
BASE_VERSION = "4"
SUITE = "bookworm"
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "procps",
    "zstd",
    # What the deploy routes and waits through with its defaults: nginx and Redis.
    "nginx-light",
    "redis-server",
)
DEPLOY_USER = "deploy"
KEY_NAME = "id_ed25519"


# Units that would only add noise or reach for the network inside a short-lived guest.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "e2scrub_reap.service",
    "systemd-pstore.service",
    # nginx wants network-online.target: with networkd enabled, wait-online would hold the boot
    # for two minutes on a guest whose only link is lo.
    "systemd-networkd-wait-online.service",
)
SSHD_CONFIG = "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
# Docs, man pages and translations are a third of the tree's files, and file creation is what
# makes copying a tree slow (~0.4 ms per file on the development VMs). Keep dpkg from adding more.
SLIM_DIRS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")
DPKG_EXCLUDES = "".join(f"path-exclude=/{d}/*\n" for d in SLIM_DIRS)


# --------------------------------------------------------------------------- tree cache


def key_for_tree(tree: Path) -> Path:
    """Private key that logs in as root and `deploy` on hosts booted from `tree`."""
    return tree.parent / KEY_NAME


def ensure_base_tree(cache: Path | None = None) -> Path:
    """Return the cached base rootfs, building it (about 50 s) if this version is not cached."""
    return _ensure_cached("base", BASE_VERSION, cache or cache_dir(), _build_base)


def ensure_derived_tree(
    name: str,
    setup_commands: list[str],
    version: str,
    cache: Path | None = None,
    base: Path | None = None,
) -> Path:
    """Return a cached rootfs made of the base tree plus `setup_commands`, building it if needed.

    The commands run in order under ``sh -e`` inside the tree (systemd-nspawn, host network,
    not booted), e.g. ``["apt-get update", "apt-get install -y foo"]``. The cache key includes
    `version`, the base version and a hash of the commands, so editing either rebuilds it.
    """
    cache = cache or cache_dir()
    base = base or ensure_base_tree(cache)
    recipe = json.dumps([base.parent.name, setup_commands]).encode()
    digest = hashlib.sha256(recipe).hexdigest()[:12]

    def build(entry: Path) -> None:
        _build_derived(entry, base, setup_commands)

    return _ensure_cached(f"derived-{name}", f"{version}-{digest}", cache, build)


def _ensure_cached(name: str, version: str, cache: Path, build: Callable[[Path], None]) -> Path:
    """Build `<cache>/<name>@<version>` once: under a file lock, into a temp dir, then rename."""
    if not _NAME_RE.match(name.replace("_", "-")):
        raise ValueError(f"invalid cache entry name {name!r}")
    entry = cache / f"{name}@{version}"
    if (entry / "rootfs").is_dir():  # the rename below is the commit point
        return entry / "rootfs"
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{name}.lock"):
        if (entry / "rootfs").is_dir():  # another process built it while we waited
            return entry / "rootfs"
        _prune(cache, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}@", dir=cache))
        try:
            started = time.monotonic()
            build(tmp)
            tmp.chmod(0o755)
            tmp.rename(entry)
            log.info("built %s in %.1f s", entry, time.monotonic() - started)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry / "rootfs"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _prune(cache: Path, name: str) -> None:
    """Drop stale versions and half-built leftovers of `name` (caller holds its lock).

    Entries a live test host (of any process) booted from are kept: deleting the lower dir of
    a running overlay breaks that guest.
    """
    in_use = {Path(state["tree"]).parent for state in _live_states()}
    for path in [*cache.glob(f"{name}@*"), *cache.glob(f".tmp-{name}@*")]:
        if path in in_use:
            log.info("keeping stale cache entry %s: a running test host uses it", path)
            continue
        log.info("removing stale cache entry %s", path)
        shutil.rmtree(path, ignore_errors=True)


def _build_base(entry: Path) -> None:
    rootfs = entry / "rootfs"
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            rootfs,
            debian_mirror(),
        ]
    )
    key = entry / KEY_NAME
    _run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pyinfra-synapse-testhost", "-f", key]
    )
    _prepare_rootfs(rootfs, Path(f"{key}.pub").read_text())
    _slim(rootfs)


def _prepare_rootfs(rootfs: Path, public_key: str) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/testhost-slim").write_text(DPKG_EXCLUDES)
    (rootfs / "etc/ssh/sshd_config.d/testhost.conf").write_text(SSHD_CONFIG)
    _authorize(rootfs, "root", public_key)
    _add_sudo_user(rootfs, DEPLOY_USER, public_key)
    _run(["systemctl", f"--root={rootfs}", "mask", *MASKED_UNITS])
    # Without /etc/hostname the guest takes nspawn's -M name (debootstrap copied the build host's).
    (rootfs / "etc/hostname").unlink(missing_ok=True)
    # A non-empty machine-id avoids first-boot logic on every (volatile) boot.
    (rootfs / "etc/machine-id").write_text(_run(["systemd-id128", "new"]).stdout)


def _authorize(rootfs: Path, user: str, public_key: str) -> None:
    home = "/root" if user == "root" else f"/home/{user}"
    ssh_dir = rootfs / home.lstrip("/") / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(public_key)
    (ssh_dir / "authorized_keys").chmod(0o600)
    _run(["chroot", rootfs, "chown", "-R", f"{user}:", f"{home}/.ssh"])


def _add_sudo_user(rootfs: Path, user: str, public_key: str) -> None:
    _run(["chroot", rootfs, "useradd", "--create-home", "--shell", "/bin/bash", user])
    # "*" = no password but not locked ("!"), so sshd accepts key logins whatever UsePAM says.
    _run(["chroot", rootfs, "usermod", "--password", "*", user])
    _authorize(rootfs, user, public_key)
    sudoers = rootfs / "etc/sudoers.d" / user
    sudoers.write_text(f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    _run(["chroot", rootfs, "visudo", "--check", "--file", f"/etc/sudoers.d/{user}"])


def _slim(rootfs: Path) -> None:
    """Drop .debs, apt indexes (the guests have no network) and docs: 300 MB -> 150 MB."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*_Packages",
        "var/lib/apt/lists/*_InRelease",
    ):
        for path in rootfs.glob(pattern):
            path.unlink()
    for directory in SLIM_DIRS:
        for path in (rootfs / directory).glob("*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _build_derived(entry: Path, base: Path, setup_commands: list[str]) -> None:
    rootfs = entry / "rootfs"
    _run(["cp", "-a", "--reflink=auto", base, rootfs])
    for suffix in ("", ".pub"):
        shutil.copy2(key_for_tree(base).with_name(KEY_NAME + suffix), entry / (KEY_NAME + suffix))
    script = "\n".join(setup_commands)
    (entry / "setup.sh").write_text(script + "\n")
    _run_in_tree(rootfs, script)
    _slim(rootfs)


def _build_host_ca_options() -> list[str]:
    """Let builds trust what this machine trusts (registries may sit behind its egress CA),
    without writing the machine's CA bundle into the cached tree."""
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.is_file():
        return []
    inside = "/run/build-host-ca.crt"
    return [
        f"--bind-ro={bundle}:{inside}",
        f"--setenv=PIP_CERT={inside}",
        f"--setenv=SSL_CERT_FILE={inside}",
        f"--setenv=REQUESTS_CA_BUNDLE={inside}",
    ]


def _run_in_tree(rootfs: Path, script: str) -> None:
    """Run `script` inside the (not booted) tree with the host's network, e.g. for apt-get."""
    cgroup = f"build-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    cmd = [
        "systemd-nspawn",
        "--quiet",
        "-D",
        str(rootfs),
        "-M",
        cgroup,
        "--register=no",
        "--keep-unit",
        "--pipe",
        "--link-journal=no",
        "--setenv=DEBIAN_FRONTEND=noninteractive",
        *_build_host_ca_options(),
        "/bin/sh",
        "-ec",
        script,
    ]
    proc = _spawn_in_cgroup(
        cgroup, cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = proc.communicate()
    finally:
        _kill_cgroup_leftovers(cgroup)
        _remove_cgroups(cgroup)
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-30:])
        raise TestHostError(f"setup commands failed in {rootfs} (rc={proc.returncode}):\n{tail}")
