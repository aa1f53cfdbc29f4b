"""Which machine this is: the id a shared store records each host's slots and agents under.

The machine id the operating system keeps for the installation (Linux `/etc/machine-id`, macOS
`kern.uuid`, Windows `MachineGuid`, the BSDs' `/etc/hostid`), else the host name. It outlives
reboots and renames, which a host name does not; a boot is told apart by the boot id
(process_identity.boot_id), never by this. Containers started from one image may share a machine id:
each must then be given its own `AGENT_COORD_HOST_ID`.
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

from agent_coord.platform.process_identity import sysctl_text

HOST_ID_MAX = 64
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"), Path("/etc/hostid"))


def valid_host_id(value: str) -> bool:
    """Letters, digits, `.`, `_`, `-`; 1-64 characters, not starting with a punctuation mark."""
    return HOST_ID_RE.fullmatch(value) is not None


def _as_host_id(raw: str) -> str | None:
    """`raw` made a valid host id (other characters become `-`), or None when nothing is left."""
    text = re.sub(r"[^A-Za-z0-9._-]", "-", raw.strip()).strip("._-")[:HOST_ID_MAX]
    return text if text and valid_host_id(text) else None


def default_host_id() -> str:
    """The machine id, else the host name, else `localhost`."""
    for path in MACHINE_ID_FILES:
        try:
            found = _as_host_id(path.read_text(errors="replace"))
        except OSError:
            continue
        if found is not None:
            return found
    machine = _macos_uuid() if sys.platform == "darwin" else None
    if sys.platform == "win32":
        machine = _windows_machine_guid()
    return (machine and _as_host_id(machine)) or _as_host_id(socket.gethostname()) or "localhost"


def _macos_uuid() -> str | None:
    """`kern.uuid`: the hardware UUID (IOPlatformUUID), without running `ioreg`."""
    return sysctl_text(b"kern.uuid")


def _windows_machine_guid() -> str | None:
    if sys.platform != "win32":
        return None
    import winreg

    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SOFTWARE\Microsoft\Cryptography") as key:
            value, _ = winreg.QueryValueEx(key, "MachineGuid")
    except OSError:
        return None
    return str(value)
