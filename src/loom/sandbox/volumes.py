"""A session's /mnt/data on the host, and the host's safe way in and out of it.

Two kinds of volume:
- "loop": a sparse ext4 image of exactly the disk limit, loop-mounted (nosuid, nodev) by the server
  (root). The limit is the filesystem's size, so writing past it fails with ENOSPC inside the sandbox.
- "dir": a plain folder, where the machine allows no mounts. The limit is then checked while code runs
  (and after), and each file is capped by RLIMIT_FSIZE inside the sandbox.

Everything in a volume was written by untrusted code: the host never follows a symbolic link in it,
never opens anything but a regular file (a FIFO would block), and never reads past a size cap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loom.sandbox.types import DATA_DIR, SandboxFile, SandboxFileError, SandboxFileNotFound

MAX_LIST_ENTRIES = 10_000
MAX_DEPTH = 32


def loop_volumes_possible() -> tuple[bool, str]:
    """Whether this process can make loop-mounted ext4 volumes (root, mkfs.ext4, mount, /dev/loop-control)."""
    if os.geteuid() != 0:
        return False, "not root"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return False, f"{tool} not found"
    if not Path("/dev/loop-control").exists():
        return False, "no /dev/loop-control"
    return True, "ok"


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name) if Path("/usr/sbin", name).exists() else name)


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(args[:2])} failed: {(proc.stderr or proc.stdout).strip()[:500]}")


def safe_name(name: str) -> str:
    """The base name a file is stored under: no folders, no control characters, at most 255 bytes."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if base in ("", ".", ".."):
        raise SandboxFileError(f"Invalid file name {name!r}.")
    encoded = base.encode("utf-8", "surrogatepass")
    if len(encoded) > 255:
        _stem, dot, ext = base.rpartition(".")
        ext = (dot + ext) if dot and len(ext) <= 16 else ""
        keep = 255 - len(ext.encode())
        base = encoded[:keep].decode("utf-8", "ignore") + ext
    return base


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 come as lone surrogates
        return False
    return name.isprintable()


def data_path_parts(path: str) -> list[str]:
    """`/mnt/data/a/b.csv`, `sandbox:/mnt/data/a/b.csv` or `a/b.csv` → ["a", "b.csv"]; refuses anything else."""
    p = path.strip()
    if p.startswith("sandbox:"):
        p = p[len("sandbox:") :]
    if "\x00" in p or not _valid_name(p):
        raise SandboxFileError("Invalid path.")
    if not p.startswith("/"):
        p = DATA_DIR + "/" + p
    norm = posixpath.normpath(p)
    if not norm.startswith(DATA_DIR + "/"):
        raise SandboxFileError(f"Path {path!r} is outside {DATA_DIR}.")
    parts = norm[len(DATA_DIR) + 1 :].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SandboxFileError(f"Invalid path {path!r}.")
    return parts


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below `folder`, deepest first."""
    prefix = str(folder.absolute())
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) > 4:
            point = parts[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all_under(folder: Path) -> bool:
    """Detach every mount at or below `folder`; True when none is left."""
    for point in mounts_under(folder):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run([_tool("umount"), "-l", point])
    return not mounts_under(folder)


@dataclass
class DataVolume:
    """`path` is the folder the sandbox sees as /mnt/data (the loop mount point, or a plain folder);
    `root` is a host-only folder that holds the loop image."""

    root: Path
    path: Path
    kind: str  # "loop" or "dir"
    uid: int
    gid: int
    disk_bytes: int
    uid_slot: int = -1

    @property
    def image(self) -> Path:
        return self.root / "data.img"

    # -------------------------------------------------------------------------------------- lifecycle

    @classmethod
    def create(
        cls, root: Path, path: Path, *, uid: int, gid: int, disk_bytes: int, loop: bool, uid_slot: int = -1
    ) -> DataVolume:
        root.mkdir(parents=True, mode=0o700)
        vol = cls(root, path, "loop" if loop else "dir", uid, gid, disk_bytes, uid_slot)
        try:
            path.mkdir(mode=0o700)
            if loop:
                with open(vol.image, "wb") as f:
                    f.truncate(disk_bytes)
                _run(
                    [
                        _tool("mkfs.ext4"), "-q", "-F", "-m", "0", "-O", "^has_journal",
                        "-E", f"root_owner={uid}:{gid},lazy_itable_init=1", str(vol.image),
                    ]
                )  # fmt: skip
                _run([_tool("mount"), "-o", "loop,nosuid,nodev", str(vol.image), str(path)])
                with contextlib.suppress(OSError):
                    (path / "lost+found").rmdir()
            os.chown(path, uid, gid)
            os.chmod(path, 0o700)
        except BaseException:
            vol.destroy()
            raise
        return vol

    def destroy(self) -> None:
        if unmount_all_under(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ usage

    def usage(self) -> int:
        """Bytes used by the files in the volume (what the disk limit counts)."""
        if self.kind == "loop":
            try:
                vfs = os.statvfs(self.path)
                return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
            except OSError:
                return 0
        total, seen = 0, 0
        stack = [str(self.path)]
        while stack and seen < 100_000:
            top = stack.pop()
            try:
                with os.scandir(top) as it:
                    for entry in it:
                        seen += 1
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        total += st.st_blocks * 512
                        if stat.S_ISDIR(st.st_mode):
                            stack.append(entry.path)
            except OSError:
                continue
        return total

    # ------------------------------------------------------------------------------------------ files

    def _open_dir(self, parts: list[str]) -> int:
        """The folder /mnt/data/<parts...>, opened without following any link (ELOOP if one is on the way)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as e:
                    is_link = False
                    with contextlib.suppress(OSError):
                        is_link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                    if is_link:
                        raise OSError(errno.ELOOP, "symbolic link") from e
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def put(self, name: str, data: bytes | Path) -> str:
        """Write `data` (bytes, or a host file of ours copied a chunk at a time, never whole in memory) as
        `name` in the volume; returns its path in the sandbox."""
        base = safe_name(name)
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            old = 0
            try:
                st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise SandboxFileError(f"{DATA_DIR}/{base} is a folder.")
                if stat.S_ISREG(st.st_mode):
                    old = st.st_blocks * 512
                else:  # a link, FIFO or socket left by the code: replace it, never write through it
                    os.unlink(base, dir_fd=dfd)
            except FileNotFoundError:
                pass
            if size > self.disk_bytes - max(0, self.usage() - old):
                raise SandboxFileError(
                    f"Not enough room in {DATA_DIR} for {base} ({size} bytes; limit {self.disk_bytes}).",
                    code="sandbox_disk_full",
                )
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
            try:
                fd = os.open(base, flags, 0o644, dir_fd=dfd)
            except OSError as e:
                raise SandboxFileError(f"Cannot write {DATA_DIR}/{base}: {e.strerror}.") from e
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise SandboxFileError(f"{DATA_DIR}/{base} is not a regular file.")
                if isinstance(data, Path):
                    with open(data, "rb") as source:
                        while chunk := source.read(1 << 20):
                            _write_all(fd, chunk)
                else:
                    _write_all(fd, data)
                os.fchown(fd, self.uid, self.gid)
                os.fchmod(fd, 0o644)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(base, dir_fd=dfd)
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise SandboxFileError(
                        f"Not enough room in {DATA_DIR} for {base}.", code="sandbox_disk_full"
                    ) from e
                raise
            finally:
                os.close(fd)
        finally:
            os.close(dfd)
        return f"{DATA_DIR}/{base}"

    def export(self, path: str, dest: Path, max_bytes: int) -> int:
        """Copy a regular file of the volume to `dest` (a host path of ours), a chunk at a time, never
        past `max_bytes`; returns its size. Refused as `read` refuses."""
        fd, shown = self._open_file(path, max_bytes)
        total = 0
        try:
            with open(dest, "wb") as out:
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > max_bytes:
                        raise SandboxFileError(f"{shown} is too large (limit {max_bytes} bytes).")
                    out.write(chunk)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return total

    def _open_file(self, path: str, max_bytes: int) -> tuple[int, str]:
        parts = data_path_parts(path)
        shown = DATA_DIR + "/" + "/".join(parts)
        try:
            dfd = self._open_dir(parts[:-1])
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SandboxFileError(f"{shown}: a folder on the way is a symbolic link.") from e
            raise SandboxFileNotFound(shown) from e
        try:
            try:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise SandboxFileError(f"{shown} is a symbolic link.") from e
                raise SandboxFileNotFound(shown) from e
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise SandboxFileError(f"{shown} is not a regular file.")
            if st.st_size > max_bytes:
                raise SandboxFileError(f"{shown} is too large ({st.st_size} bytes; limit {max_bytes}).")
        except BaseException:
            os.close(fd)
            raise
        return fd, shown

    def read(self, path: str, max_bytes: int) -> bytes:
        fd, shown = self._open_file(path, max_bytes)
        try:
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise SandboxFileError(f"{shown} is too large (limit {max_bytes} bytes).")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def list(self) -> list[SandboxFile]:
        out: list[SandboxFile] = []
        stack: list[tuple[str, str, int]] = [(str(self.path), DATA_DIR, 0)]
        seen = 0
        while stack:
            top, shown, depth = stack.pop()
            try:
                with os.scandir(top) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > MAX_LIST_ENTRIES:
                    return sorted(out, key=lambda f: f.path)
                if not _valid_name(entry.name):
                    continue  # not valid UTF-8 (or unprintable): it cannot be named to the model or a File
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                child = f"{shown}/{entry.name}"
                if stat.S_ISREG(st.st_mode):
                    out.append(SandboxFile(child, st.st_size, st.st_mtime))
                elif stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                    stack.append((entry.path, child, depth + 1))
        return sorted(out, key=lambda f: f.path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
