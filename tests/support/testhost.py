"""Throwaway systemd test hosts for deploy tests (debootstrap + systemd-nspawn).

Each `TestHost` is a real Debian bookworm machine: systemd 252 as PID 1, sshd, python3 and
sudo, booted with ``systemd-nspawn --volatile=overlay`` on top of a cached, read-only tree. Every
boot starts pristine, any number of hosts can share one tree, and each host has a private network
(only its own ``lo``), so services in different hosts may use the same ports. The guest's sshd is
reached through a socat bridge on a free ``127.0.0.1`` port. Root logs in with the tree's key, and
so does ``deploy``, which has passwordless sudo (for pyinfra ``_sudo`` deploys).

Usage::

    from tests.support.testhost import TestHost, ensure_derived_tree

    with TestHost.start("web1") as host:          # builds the base tree on first use
        host.ssh("systemctl is-system-running")   # CompletedProcess; raises if rc != 0
        host.ssh("sudo -n true", user="deploy")
        name, data = host.inventory_entry()       # pyinfra inventory host tuple
        spec = host.testinfra_spec()              # pytest --hosts=SPEC / testinfra.get_host(SPEC)

    tree = ensure_derived_tree("marker", ["echo hi > /etc/marker"], version="1")
    host = TestHost.start("web2", tree=tree)      # base + your setup commands, cached
    host.stop()

In pytest, use the fixtures in ``tests/support/fixtures.py`` (``base_tree``, ``testhost``,
``testhost_factory``). From a shell (as root, in the repository root)::

    python -m tests.support.testhost build        # build (or reuse) the cached base tree
    python -m tests.support.testhost boot NAME    # boot, print JSON, run until SIGINT/SIGTERM
    python -m tests.support.testhost cleanup      # stop hosts left by killed processes

Needs root, the cgroup mounts under /sys/fs/cgroup (hybrid v1+v2 as on the development VMs;
pure v2 is untested), the Debian packages ``systemd-container debootstrap socat openssh-client
util-linux``, and, only to build trees, the Debian mirror named in /etc/apt/sources.list.d/.

Host names must be unique among running hosts (``[a-z0-9-]``, at most 63 characters): they name
the guest's hostname, its cgroups (``/sys/fs/cgroup/*/testhost/NAME``) and its run directory.

Environment variables:

- ``PYINFRA_SYNAPSE_CACHE``: tree cache (default ``/var/cache/pyinfra-synapse``). An entry is
  ``<name>@<version>/{rootfs,id_ed25519,id_ed25519.pub}``. Bump `BASE_VERSION` when the recipe
  changes; building a new version prunes older ones unless a running host uses them.
- ``PYINFRA_SYNAPSE_RUN``: run files (default ``/run/pyinfra-synapse/NAME``): console.log,
  bridge.log, ssh_config, state.json and ssh control sockets. Removed on stop.
- ``PYINFRA_SYNAPSE_MIRROR``: overrides the Debian mirror URL.

Timings on the 2-vCPU Firecracker development VM:

- base tree build (debootstrap, once per `BASE_VERSION`): 46-52 s; 156 MB, 6,600 files;
- derived tree: 3-6 s plus the commands (copying is bound by file creation, ~0.5 ms per file);
- ``TestHost.start`` until ssh works and is-system-running says running: 0.5 s;
- ``stop()`` (orderly guest poweroff): 0.12-0.18 s;
- ``ssh()``: 0.2 s for the first command, then 0.04 s (OpenSSH connection sharing).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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

DEFAULT_CACHE_DIR = Path("/var/cache/pyinfra-synapse")
DEFAULT_RUN_DIR = Path("/run/pyinfra-synapse")
BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Host-side tools and the Debian packages that provide them.
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "socat": "socat",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}

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

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_CGROUP_BASE = Path("/sys/fs/cgroup")
# Moves the shell into the cgroups listed in $TESTHOST_CGROUP_PROCS, then execs the real command.
_CGROUP_EXEC = 'for p in $TESTHOST_CGROUP_PROCS; do echo $$ > "$p" || exit 1; done; exec "$@"'


class TestHostError(RuntimeError):
    """A test host could not be built, booted or stopped."""

    __test__ = False  # not a pytest test class despite the name


class SSHCommandError(subprocess.CalledProcessError):
    """A command run over ssh failed; the message includes its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


# --------------------------------------------------------------------------- environment


def cache_dir() -> Path:
    return Path(os.environ.get("PYINFRA_SYNAPSE_CACHE", DEFAULT_CACHE_DIR))


def run_root() -> Path:
    return Path(os.environ.get("PYINFRA_SYNAPSE_RUN", DEFAULT_RUN_DIR))


def missing_prerequisites() -> list[str]:
    """Human-readable reasons why test hosts cannot run here (empty if they can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (systemd-nspawn and cgroup setup need it)")
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if missing:
        problems.append(f"missing tools; install with: apt-get install -y {' '.join(missing)}")
    if not _cgroup_roots():
        problems.append(f"no usable cgroup hierarchy under {_CGROUP_BASE}")
    return problems


def debian_mirror() -> str:
    """The Debian mirror this machine already uses (never hard-coded)."""
    if env := os.environ.get("PYINFRA_SYNAPSE_MIRROR"):
        return env
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.exists():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:") and not line.rstrip().endswith("-security"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and "security" not in fields[1]:
                return next(f for f in fields[1:] if not f.startswith("["))
    raise TestHostError("no Debian mirror found in /etc/apt; set PYINFRA_SYNAPSE_MIRROR")


def _run(cmd: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command; on failure raise TestHostError with the tail of its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
        raise TestHostError(
            f"{' '.join(map(str, cmd))[:300]} failed (rc={proc.returncode}):\n" + "\n".join(output)
        )
    return proc


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


# --------------------------------------------------------------------------- cgroups and processes


def _stop_process_group(process: subprocess.Popen[bytes], cgroup: str) -> None:
    if process.returncode is None:  # not reaped yet, so the PID/PGID cannot have been reused
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    _kill_cgroup_leftovers(cgroup)
    _remove_cgroups(cgroup)


def _cgroup_roots() -> list[Path]:
    """Hierarchies nspawn uses: name=systemd + unified on hybrid hosts, else the cgroup2 root."""
    hybrid = [_CGROUP_BASE / "systemd", _CGROUP_BASE / "unified"]
    if all((p / "cgroup.procs").exists() for p in hybrid):
        return hybrid
    if (_CGROUP_BASE / "cgroup.controllers").exists():  # pure cgroup2 host (untested)
        return [_CGROUP_BASE]
    return []


def _cgroup_dirs(rel: str) -> list[Path]:
    return [root / "testhost" / rel for root in _cgroup_roots()]


def _spawn_in_cgroup(rel: str, cmd: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start `cmd` in its own session inside testhost/<rel> in every hierarchy.

    Own cgroups matter: with --keep-unit and no host systemd, nspawn creates payload/ and
    supervisor/ under its *current* cgroup, so two hosts launched from one place would share them.
    """
    procs = []
    for path in _cgroup_dirs(rel):
        path.mkdir(parents=True, exist_ok=True)
        procs.append(str(path / "cgroup.procs"))
    env = {**os.environ, "TESTHOST_CGROUP_PROCS": " ".join(procs)}
    return subprocess.Popen(
        ["/bin/sh", "-c", _CGROUP_EXEC, "sh", *cmd],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **popen,
    )


def _cgroup_pids(rel: str) -> set[int]:
    """PIDs anywhere below testhost/<rel> (all of them descend from processes we started)."""
    pids: set[int] = set()
    for top in _cgroup_dirs(rel):
        for dirpath, _, _ in os.walk(top):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _in_cgroup(pid: int, rel: str) -> bool:
    """True if `pid` is alive and inside testhost/<rel>: guards against PID reuse."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    prefix = f"/testhost/{rel}"
    inside = any(
        line.split(":", 2)[2] == prefix or line.split(":", 2)[2].startswith(prefix + "/")
        for line in lines
    )
    return inside and state != "Z"


def _signal(pid: int | None, sig: int, rel: str) -> None:
    """Send `sig` to `pid` only if it is still one of ours (alive and in our cgroup)."""
    if pid and _in_cgroup(pid, rel):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pid: int | None, rel: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid and _in_cgroup(pid, rel):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_cgroup_leftovers(rel: str, timeout: float = 5.0) -> None:
    """SIGKILL whatever is still in our cgroups (e.g. orphaned socat children) and wait."""
    deadline = time.monotonic() + timeout
    while pids := _cgroup_pids(rel):
        if time.monotonic() > deadline:
            raise TestHostError(f"processes {sorted(pids)} still in cgroup testhost/{rel}")
        for pid in pids:
            _signal(pid, signal.SIGKILL, rel)
        time.sleep(0.05)


def _remove_cgroups(rel: str) -> None:
    """rmdir testhost/<rel> and everything the guest created below it, deepest first."""
    for top in _cgroup_dirs(rel):
        if not top.exists():
            continue
        for dirpath, _, _ in os.walk(top, topdown=False):
            Path(dirpath).rmdir()


def _proc_start_time(pid: int) -> str | None:
    """Start time of a live process (None if gone or a zombie): a PID-reuse-proof identity."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Zombies count as dead: PID 1 on these VMs is slow to reap orphans.
    return None if fields[0] == "Z" else fields[19]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:`port` in our netns? (No probe connection needed.)"""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return any(f[1] == wanted and f[3] == "0A" for f in (line.split() for line in fh))


# --------------------------------------------------------------------------- test hosts

_LIVE: set[TestHost] = set()


class TestHost:
    """One booted guest. Create with `TestHost.start`; stop with `stop()` or a `with` block."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, name: str, tree: Path) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid host name {name!r}: use [a-z0-9-], at most 63 characters")
        self.name = name
        self.tree = tree
        self.key_path = key_for_tree(tree)
        self.run_dir = run_root() / name
        self.port = 0
        self.guest_pid: int | None = None  # the guest's systemd (PID 1 inside)
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._bridge: subprocess.Popen[bytes] | None = None
        self._forwards: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._claimed = False  # True once the name's cgroups and run dir are ours to clean up

    # ----- public API

    @classmethod
    def start(cls, name: str, tree: Path | None = None, timeout: float = BOOT_TIMEOUT) -> TestHost:
        """Boot a fresh host from `tree` (default: the base tree) and wait until it is running."""
        host = cls(name, tree or ensure_base_tree())
        if not host.key_path.is_file():
            raise TestHostError(f"no ssh key {host.key_path} next to tree {host.tree}")
        try:
            host._boot(time.monotonic() + timeout)
        except BaseException:
            try:
                host.stop()
            except Exception:  # keep the boot error; the cleanup error only goes to the log
                log.exception("cleanup after failed boot of %s failed", name)
            raise
        return host

    @property
    def nspawn_pid(self) -> int | None:
        return self._nspawn.pid if self._nspawn else None

    @property
    def bridge_pid(self) -> int | None:
        return self._bridge.pid if self._bridge else None

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def ssh_config(self) -> Path:
        return self.run_dir / "ssh_config"

    @property
    def cgroup_dirs(self) -> list[Path]:
        return _cgroup_dirs(self.name)

    def ssh(
        self,
        cmd: str,
        user: str = "root",
        check: bool = True,
        timeout: float | None = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` through the remote user's shell; raise SSHCommandError if check and rc != 0."""
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key_path),
            "-p",
            str(self.port),
            "-l",
            user,
        ]
        argv += [f"-o{k}={v}" for k, v in self._ssh_options().items()]
        proc = subprocess.run(
            [*argv, "127.0.0.1", cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise SSHCommandError(
                proc.returncode, f"ssh {user}@{self.name} {cmd}", proc.stdout, proc.stderr
            )
        return proc

    def inventory_entry(self, user: str = "root") -> tuple[str, dict[str, Any]]:
        """A pyinfra inventory host: ``hosts = [host.inventory_entry()]``."""
        return self.name, {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": self.port,
            "ssh_user": user,
            "ssh_key": str(self.key_path),
            "ssh_known_hosts_file": "/dev/null",
            "ssh_strict_host_key_checking": "no",
        }

    def testinfra_spec(self, user: str = "root") -> str:
        """Host spec for ``pytest --hosts=SPEC`` or ``testinfra.get_host(SPEC)`` (ssh backend).

        The ``ssh_config`` written to the run dir maps the host name to the bridge port and key.
        """
        return f"ssh://{user}@{self.name}?ssh_config={self.ssh_config}"

    def stop(self) -> None:
        """Shut the guest down and remove its bridge, cgroups and run dir. Idempotent."""
        if not self._claimed:
            return
        try:
            self._close_ssh_masters()
            # Guest first: its sshd closes every bridged connection, so socat reaps its children.
            self._stop_guest()
            self._stop_bridge()
            _kill_cgroup_leftovers(self.name)
            _remove_cgroups(self.name)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._claimed = False
        finally:
            _LIVE.discard(self)

    def __enter__(self) -> TestHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TestHost {self.name} 127.0.0.1:{self.port} nspawn={self.nspawn_pid}>"

    # ----- boot

    def _boot(self, deadline: float) -> None:
        self._claim()
        _LIVE.add(self)
        self._launch_nspawn()
        self.guest_pid = self._wait_for_guest_init(deadline)
        self._start_bridge()
        self._write_run_files()
        self._wait_for_ssh(deadline)
        self._wait_for_running(deadline)

    def _claim(self) -> None:
        """Refuse a name that is in use; clear what a dead host of the same name left behind."""
        if pids := _cgroup_pids(self.name):
            raise TestHostError(f"host name {self.name!r} is in use (processes {sorted(pids)})")
        _remove_cgroups(self.name)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self._claimed = True

    def _launch_nspawn(self) -> None:
        cmd = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.tree),
            "-M",
            self.name,
            "-b",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--console=read-only",
            "--private-network",
            "--link-journal=no",
            # Each guest is its own machine: the deploy refuses two inventory hosts on one
            # machine-id (the tree's own id would make every guest look like the same machine).
            f"--bind-ro={self._machine_id_file()}:/etc/machine-id",
            # ...and that bind mount must stay: mask the unit that would try to "commit" it.
            "--bind-ro=/dev/null:/etc/systemd/system/systemd-machine-id-commit.service",
        ]
        with open(self.console_log, "wb") as console:
            self._nspawn = _spawn_in_cgroup(
                self.name, cmd, stdout=console, stderr=subprocess.STDOUT
            )

    def _wait_for_guest_init(self, deadline: float) -> int:
        """The guest's PID 1 is the nspawn child whose innermost namespace PID is 1."""
        assert self._nspawn
        while True:
            for pid in self._children(self._nspawn.pid):
                if self._innermost_pid(pid) == 1:
                    return pid
            self._check_alive(deadline, "the guest's PID 1 to appear")
            time.sleep(0.02)

    @staticmethod
    def _children(pid: int) -> list[int]:
        children: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                children += [int(c) for c in (task / "children").read_text().split()]
        return children

    @staticmethod
    def _innermost_pid(pid: int) -> int | None:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:") and len(line.split()) > 2:
                    return int(line.split()[-1])
        return None

    def _start_bridge(self) -> None:
        """socat on a free 127.0.0.1 port -> nsenter into the guest netns -> guest port 22."""
        self.port, self._bridge = self._spawn_bridge(22, f"{self.name}/bridge", "bridge.log")

    def forward(self, guest_port: int) -> int:
        """Make the guest's loopback ``guest_port`` reachable on a free 127.0.0.1 port here."""
        port, process = self._spawn_bridge(
            guest_port, f"{self.name}/forward-{guest_port}", f"forward-{guest_port}.log"
        )
        self._forwards.append((f"{self.name}/forward-{guest_port}", process))
        return port

    def _spawn_bridge(
        self, guest_port: int, cgroup: str, log_name: str, attempts: int = 5
    ) -> tuple[int, subprocess.Popen[bytes]]:
        for _ in range(attempts):
            port = _free_port()
            inner = f"nsenter -t {self.guest_pid} -n socat STDIO TCP\\:127.0.0.1\\:{guest_port}"
            cmd = ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"EXEC:{inner}"]
            with open(self.run_dir / log_name, "ab") as bridge_log:
                process = _spawn_in_cgroup(cgroup, cmd, stdout=bridge_log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 5
            while process.poll() is None and time.monotonic() < deadline:
                if _listening(port):
                    return port, process
                time.sleep(0.01)
            # Lost the race for the port (or socat failed): pick another one.
            _stop_process_group(process, cgroup)
        raise TestHostError(f"socat bridge did not start:\n{self._tail(self.run_dir / log_name)}")

    def _machine_id_file(self) -> Path:
        path = self.run_dir / "machine-id"
        path.write_text(uuid.uuid4().hex + "\n")
        return path

    def _write_run_files(self) -> None:
        options = "".join(f"  {k} {v}\n" for k, v in self._ssh_options().items())
        self.ssh_config.write_text(
            f"Host {self.name}\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {self.key_path}\n{options}"
        )
        state = {
            "name": self.name,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start_time(os.getpid()),
            "tree": str(self.tree),
            "nspawn_pid": self.nspawn_pid,
            "guest_pid": self.guest_pid,
            "bridge_pid": self.bridge_pid,
            "port": self.port,
        }
        (self.run_dir / "state.json").write_text(json.dumps(state))

    def _ssh_options(self) -> dict[str, str]:
        options = {
            "IdentitiesOnly": "yes",
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "LogLevel": "ERROR",
            "BatchMode": "yes",
            "ConnectTimeout": "5",
        }
        # Connection sharing makes later commands ~45 ms instead of ~200 ms (testinfra runs many).
        # The master exits when the guest's sshd goes away; sun_path allows ~108 bytes.
        control_path = f"{self.run_dir}/cm-%r"
        if len(control_path) < 80:
            options |= {
                "ControlMaster": "auto",
                "ControlPath": control_path,
                "ControlPersist": "60s",
            }
        return options

    def _close_ssh_masters(self) -> None:
        for socket_path in self.run_dir.glob("cm-*"):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", self.name],
                capture_output=True,
                timeout=10,
                stdin=subprocess.DEVNULL,
            )

    def _wait_for_ssh(self, deadline: float) -> None:
        while True:
            try:
                proc = self.ssh("true", check=False, timeout=5)
                if proc.returncode == 0:
                    return
                error = proc.stderr.strip()
            except subprocess.TimeoutExpired:
                error = "ssh timed out"
            self._check_alive(deadline, f"sshd to answer (last ssh error: {error})")
            time.sleep(0.05)

    def _wait_for_running(self, deadline: float) -> None:
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired("is-system-running", 0)
            cmd = "systemctl is-system-running --wait"
            state = self.ssh(cmd, check=False, timeout=remaining).stdout.strip()
        except subprocess.TimeoutExpired:
            self._check_alive(deadline, "systemctl is-system-running --wait")
            raise  # not reached: _check_alive raises once the deadline has passed
        if state == "running":
            return
        failed = self.ssh("systemctl --failed --no-legend --plain", check=False).stdout.strip()
        raise TestHostError(
            f"{self.name}: system is {state!r}; failed units:\n{failed}\n"
            f"console log tail:\n{self._tail(self.console_log)}"
        )

    def _check_alive(self, deadline: float, waiting_for: str) -> None:
        assert self._nspawn
        if self._nspawn.poll() is not None:
            problem = f"systemd-nspawn exited with rc={self._nspawn.returncode}"
        elif time.monotonic() > deadline:
            problem = "boot timed out"
        else:
            return
        raise TestHostError(
            f"{self.name}: {problem} while waiting for {waiting_for}; "
            f"console log tail ({self.console_log}):\n{self._tail(self.console_log)}"
        )

    @staticmethod
    def _tail(path: Path, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    # ----- stop

    def _stop_bridge(self) -> None:
        """Kill each socat's whole process group: forked per-connection children die with it."""
        for cgroup, process in self._forwards:
            _stop_process_group(process, cgroup)
        self._forwards = []
        if self._bridge is not None:
            _stop_process_group(self._bridge, f"{self.name}/bridge")
        self._bridge = None

    def _stop_guest(self) -> None:
        """SIGTERM nspawn (orderly poweroff); fall back to RTMIN+3, then KILL, on guest PID 1."""
        nspawn = self._nspawn
        if nspawn is not None and nspawn.poll() is None:
            nspawn.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                nspawn.wait(STOP_TIMEOUT)
        _signal(self.guest_pid, signal.SIGRTMIN + 3, self.name)
        if not _wait_gone(self.guest_pid, self.name, 5):
            _signal(self.guest_pid, signal.SIGKILL, self.name)
            _wait_gone(self.guest_pid, self.name, 5)
        if nspawn is not None and nspawn.poll() is None:
            nspawn.kill()
        if nspawn is not None:
            nspawn.wait()
        self._nspawn = None


def _stop_all() -> None:
    """atexit hook: never leave guests running after a crashed test run."""
    for host in list(_LIVE):
        try:
            host.stop()
        except Exception:
            log.exception("could not stop %s", host)


atexit.register(_stop_all)


def reap_stale() -> list[str]:
    """Stop hosts whose owning process died without cleaning up (e.g. SIGKILLed pytest).

    Only PIDs recorded in the host's state.json are signalled, and only while they are still in
    that host's cgroup. Returns the names of the hosts cleaned up.
    """
    reaped = []
    for state in _states():
        if not state["owner_alive"]:
            _reap(state)
            shutil.rmtree(run_root() / state["name"], ignore_errors=True)
            reaped.append(state["name"])
    return reaped


def _states() -> list[dict[str, Any]]:
    """state.json of every host under the run root, plus whether its owning process lives."""
    states = []
    for state_file in run_root().glob("*/state.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads(state_file.read_text())
            state["owner_alive"] = _proc_start_time(int(state["owner_pid"])) == state["owner_start"]
            states.append(state)
    return states


def _live_states() -> list[dict[str, Any]]:
    return [state for state in _states() if state["owner_alive"]]


def _reap(state: dict[str, Any]) -> None:
    name = state["name"]
    _signal(state.get("bridge_pid"), signal.SIGKILL, f"{name}/bridge")
    _signal(state.get("nspawn_pid"), signal.SIGTERM, name)
    _signal(state.get("guest_pid"), signal.SIGRTMIN + 3, name)
    if not _wait_gone(state.get("guest_pid"), name, STOP_TIMEOUT):
        _signal(state.get("guest_pid"), signal.SIGKILL, name)
    _kill_cgroup_leftovers(name)
    _remove_cgroups(name)


# --------------------------------------------------------------------------- CLI


def _cli_boot(name: str, tree: Path | None) -> int:
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    started = time.monotonic()
    with TestHost.start(name, tree) as host:
        info = {
            "name": host.name,
            "port": host.port,
            "key_path": str(host.key_path),
            "inventory": host.inventory_entry(),
            "testinfra": host.testinfra_spec(),
            "ssh": f"ssh -F {host.ssh_config} {host.name}",
            "boot_seconds": round(time.monotonic() - started, 2),
        }
        print(json.dumps(info, indent=2), flush=True)
        while not stop:
            signal.pause()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.testhost", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or reuse) the cached base tree and print its path")
    boot = sub.add_parser(
        "boot", help="boot a host, print JSON, keep it running until SIGTERM/SIGINT"
    )
    boot.add_argument("name")
    boot.add_argument("--tree", type=Path, help="rootfs to boot (default: the base tree)")
    sub.add_parser("cleanup", help="stop hosts left behind by processes that died")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if problems := missing_prerequisites():
        parser.error("; ".join(problems))
    if args.command == "build":
        started = time.monotonic()
        tree = ensure_base_tree()
        print(
            json.dumps(
                {
                    "tree": str(tree),
                    "key_path": str(key_for_tree(tree)),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
        )
        return 0
    if args.command == "cleanup":
        print(json.dumps({"reaped": reap_stale()}))
        return 0
    return _cli_boot(args.name, args.tree)


if __name__ == "__main__":
    sys.exit(main())
