"""Docker for the end-to-end example test, with nothing from outside this machine.

No image registry is reachable here, so the base image is made on the spot:
`debootstrap --variant=minbase` of this machine's Debian release from the
mirror apt is configured with (read from apt's sources at run time), trimmed,
and `docker import`ed. It is cached by content: its tag is a hash of
everything that goes into it (release, mirror, packages, recipe), so a second
run, or CI on a machine that has it, skips the minute debootstrap takes.
Waypost goes into the images from a wheelhouse built on the host.

The daemon is Debian's docker.io: if none answers, one is started (as root,
with the vfs storage driver, which works without overlayfs, and without
iptables rules, which would outlive it) and stopped at the end. Whatever
cannot work here is a skip that says exactly what failed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("python3", "python3-venv")
RECIPE = "minbase+python3-venv, no apt lists, docs or locales; v1"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


class Unavailable(Exception):
    """Docker, debootstrap or the mirror cannot work on this machine; says why."""


def run(*cmd: str, timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload,no-any-return]


def daemon_answers() -> bool:
    try:
        return run(DOCKER, "info", timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_daemon(log_dir: Path) -> subprocess.Popen[bytes]:
    """Start dockerd (vfs) and wait for it; raises Unavailable with its log's end."""
    if shutil.which("dockerd") is None:
        raise Unavailable("dockerd is not installed (scripts/system-deps.sh installs docker.io)")
    if os.geteuid() != 0:
        raise Unavailable("no Docker daemon answers and starting one needs root")
    log = log_dir / "dockerd.log"
    with log.open("wb") as out:
        # --iptables=false: the daemon's rules outlive it (FORWARD set to DROP,
        # and connection tracking on every packet of the host, loopback too:
        # ~14% of a loopback send, docs/benchmarks.md, Agent 3). The example
        # needs none: its network is internal, and the published port is
        # served by docker-proxy.
        command = ["dockerd", "--storage-driver", "vfs", "--iptables=false"]
        proc = subprocess.Popen(command, stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon_answers():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.terminate()
    tail = log.read_text(errors="replace")[-1500:]
    raise Unavailable(f"dockerd did not start (exit {proc.poll()}):\n{tail}")


def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def debian_mirror() -> tuple[str, str]:
    """(mirror URI, release codename) from apt's own configuration."""
    release = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            release = line.split("=", 1)[1].strip('"')
    if not release:
        raise Unavailable("cannot tell this machine's Debian release from /etc/os-release")
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.MULTILINE))
            if (
                "deb" in fields.get("Types", "").split()
                and release in fields.get("Suites", "").split()
            ):
                return fields["URIs"].split()[0], release
    listed = Path("/etc/apt/sources.list")
    if listed.exists():
        for line in listed.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == release:
                return parts[1], release
    raise Unavailable(f"no Debian mirror for {release} in apt's sources")


def base_image(cache_dir: Path) -> str:
    """The tag of the base image, made (debootstrap + import) only if missing."""
    mirror, release = debian_mirror()
    key = hashlib.sha256(f"{release}|{mirror}|{PACKAGES}|{RECIPE}".encode()).hexdigest()[:16]
    tag = f"waypost-test-base:{key}"
    if run(DOCKER, "image", "inspect", tag).returncode == 0:
        return tag
    tarball = cache_dir / f"base-{key}.tar"
    if not tarball.exists():
        _debootstrap(mirror, release, tarball)
    imported = run(DOCKER, "import", str(tarball), tag)
    if imported.returncode != 0:
        raise Unavailable(f"docker import failed: {imported.stderr.strip()}")
    return tag


def _debootstrap(mirror: str, release: str, tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise Unavailable("debootstrap is not installed (scripts/system-deps.sh installs it)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="waypost-rootfs-") as root:
        include = ",".join(PACKAGES)
        made = run(
            "debootstrap",
            "--variant=minbase",
            f"--include={include}",
            release,
            root,
            mirror,
            timeout=600,
        )
        if made.returncode != 0:
            raise Unavailable(
                f"debootstrap {release} from {mirror} failed:\n{made.stdout[-1500:]}{made.stderr[-1500:]}"
            )
        for junk in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
        ):
            shutil.rmtree(Path(root) / junk, ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        packed = run("tar", "-C", root, "-cf", str(partial), ".", timeout=300)
        if packed.returncode != 0:
            raise Unavailable(f"tar of the base image failed: {packed.stderr.strip()}")
        partial.rename(tarball)  # only a whole tarball is ever cached


def build_context(repo: Path, dest: Path, pip: str) -> None:
    """What examples/Dockerfile needs, plus a wheelhouse of waypost and its
    dependencies for the offline install (`PIP_ARGS=--no-index ...`)."""
    for name in ("src", "examples", "pyproject.toml", "README.md", ".dockerignore"):
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    built = run(
        pip,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--wheel-dir",
        str(dest / "wheelhouse"),
        str(dest),
        timeout=600,
    )
    if built.returncode != 0:
        raise Unavailable(f"pip wheel failed:\n{built.stderr[-1500:]}")
