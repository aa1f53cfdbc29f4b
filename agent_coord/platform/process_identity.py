"""What tells one boot, and one process start, from another: the raw facts liveness is judged on.

Linux: the kernel's boot id, and a process's start counted in clock ticks from boot (/proc). The
wall-clock create time psutil reports there is the boot time + that start, and the boot time moves
whenever the clock is stepped (NTP, a VM's clock correction), so only the start since boot is stable.

macOS and Windows have no /proc: `start_since_boot` is None and the wall-clock create time decides.
That is sound there because their kernels stamp a process's start once, in wall-clock time
(`p_starttime` on macOS, the creation FILETIME on Windows), and a later clock step does not move the
stamp. The boot id comes from `kern.bootsessionuuid` (macOS) and the `BootId` counter Windows keeps
in the registry; only where neither exists does it fall back to the boot time in whole seconds, which
a clock step does move (then the lease, not the boot id, is what protects a live agent).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

import psutil

PROC = Path("/proc")
BOOT_ID_FILE = PROC / "sys" / "kernel" / "random" / "boot_id"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
FALLBACK_BOOT_PREFIX = "boot-time-"


def boot_id() -> str:
    """An id that is the same for the whole of this boot and differs after the next one."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        pass
    found = _macos_boot_session() if sys.platform == "darwin" else None
    if sys.platform == "win32":
        found = _windows_boot_counter()
    return found or f"{FALLBACK_BOOT_PREFIX}{int(psutil.boot_time())}"


def start_since_boot(pid: int) -> float | None:
    """Seconds from boot to the start of `pid` (Linux: `starttime` in /proc/<pid>/stat), or None
    where /proc is absent or unreadable (then the wall-clock create time decides; see above)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    try:
        # Fields after the command name (which may hold spaces and parentheses); starttime is field 22.
        return int(raw.rsplit(b")", 1)[1].split()[19]) / CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def sysctl_text(key: bytes) -> str | None:
    """A text value of the BSD kernel's `sysctlbyname` (macOS), or None where it cannot be read."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        size = ctypes.c_size_t(64)
        buf = ctypes.create_string_buffer(size.value)
        if libc.sysctlbyname(key, buf, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return buf.value.decode(errors="replace").strip() or None


def _macos_boot_session() -> str | None:
    """`kern.bootsessionuuid`: a UUID the kernel draws at boot."""
    text = sysctl_text(b"kern.bootsessionuuid")
    return f"macos-{text}" if text else None


def _windows_boot_counter() -> str | None:
    """The boot counter Windows keeps for the prefetcher; it grows by one at every boot."""
    if sys.platform != "win32":
        return None
    import winreg

    key_path = r"SYSTEM\CurrentControlSet\Control\Session Manager\Memory Management\PrefetchParameters"
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key_path) as key:
            value, _ = winreg.QueryValueEx(key, "BootId")
    except OSError:
        return None
    return f"windows-{value}"
