"""Is a path on a network filesystem? SQLite's WAL mode keeps its index in shared memory beside the
database, which works only when every process sharing the file runs on one machine: on an NFS, SMB or
AFP share, WAL either fails or silently corrupts (https://www.sqlite.org/wal.html, "Disadvantages").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path, PurePath, PureWindowsPath

import psutil

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smbfs", "smb2", "smb3", "afpfs", "webdav", "davfs", "fuse.sshfs", "sshfs",
        "9p", "ncpfs", "afs", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph", "lustre", "fuse.rclone",
    }
)  # fmt: skip
DRIVE_REMOTE = 4  # GetDriveTypeW


class NetworkShareError(OSError):
    """The database would sit on a network filesystem."""


def is_unc(path: str) -> bool:
    """`\\\\server\\share\\…` (or with forward slashes): always a network location on Windows."""
    drive = PureWindowsPath(path).drive
    return drive.startswith(("\\\\", "//")) and not drive.startswith(("\\\\?\\", "\\\\.\\"))


def network_fstype(path: PurePath, mounts: Iterable[tuple[str, str]]) -> str | None:
    """The network filesystem type of the mount holding `path`, from (mount point, fstype) pairs."""
    best: tuple[int, str] | None = None
    for mountpoint, fstype in mounts:
        point = PurePath(mountpoint)
        if path == point or point in path.parents:
            depth = len(point.parts)
            if best is None or depth > best[0]:
                best = (depth, fstype.lower())
    if best is None:
        return None
    return best[1] if best[1] in NETWORK_FILESYSTEMS else None


def network_share(path: Path) -> str | None:
    """Why `path` is on a network share ("nfs", "a UNC path", "a network drive"), or None."""
    text = str(path)
    if is_unc(text) and (sys.platform == "win32" or text.startswith("\\\\")):
        return "a UNC path"
    if sys.platform == "win32":
        import ctypes

        root = PureWindowsPath(os.path.abspath(text)).anchor
        if root and ctypes.windll.kernel32.GetDriveTypeW(root) == DRIVE_REMOTE:
            return "a network drive"
        return None
    try:
        mounts = [(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)]
    except (OSError, RuntimeError):
        return None
    real = Path(os.path.realpath(text))
    return network_fstype(real, mounts)


def refuse_network_share(path: Path) -> None:
    found = network_share(path)
    if found is not None:
        raise NetworkShareError(
            f"the database {path} is on {found if found.startswith('a ') else 'a ' + found + ' share'}: SQLite's "
            "write-ahead log needs every process on one machine; set AGENT_COORD_DB to a file on a local disk"
        )
