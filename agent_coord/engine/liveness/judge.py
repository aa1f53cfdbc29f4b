"""Who is this agent, and is that one alive? Deterministic where it can be, lease-based where not.

An agent is its process: host, boot id, pid *and* create time (a reused pid has another create time).
The agent process is the server's nearest ancestor that is not a wrapper (a shell that runs a hook,
`uv run`, `npx`), so a hook run through `sh -c` is attributed to Claude Code, not to the shell.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Literal

import psutil

from agent_coord import LAUNCHER_PID
from agent_coord.engine.store.records import Agent, Origin, SlotState, SlotWorker, WorkerProcess
from agent_coord.platform.host_id import default_host_id
from agent_coord.platform.process_identity import CLOCK_TICKS, boot_id, start_since_boot

# Create times come from /proc with jiffy resolution; allow for rounding between readers.
CREATE_TIME_TOLERANCE_S = 0.05

ProcessState = Literal["alive", "gone", "reused", "unknown"]
# Init programs adopt orphans: an agent process recorded as one of them at pid 1 is an adopter, not an
# agent, and the server's real agent is gone. Any other pid 1 (a container whose entry point is the
# agent, or the shell that runs a CI script) may well have started the server itself.
ORPHAN_PID = 1
INIT_PROGRAMS = frozenset(
    {"init", "systemd", "tini", "docker-init", "dumb-init", "catatonit", "s6-svscan", "runit", "launchd", "openrc-init"}
)


def is_init_adopter(pid: int) -> bool:
    """Is `pid` the host's or container's init (pid 1 running an init program), which adopts orphans?"""
    if pid != ORPHAN_PID:
        return False  # (pid 0: we are init ourselves, with no parent to lose)
    try:
        name = psutil.Process(pid).name().lower()
    except psutil.Error:
        return False
    return name in INIT_PROGRAMS


TICK_TOLERANCE_S = 1.5 / CLOCK_TICKS  # starts since boot are whole ticks: equal, or another process


def process_state(pid: int, created: float, since_boot: float | None = None) -> ProcessState:
    """Is the process `pid` that was created at `created` (`since_boot` seconds after boot, where
    known) still running, on this host?

    "reused": the pid runs another program now (another start time). "gone" includes a zombie: it
    has exited and only waits to be reaped, and an unreaped agent must not hold worktrees forever.
    "unknown": the process exists but may not be inspected (another user, hidepid); the lease decides.
    The start counted from boot decides where both sides have it. Without it (a record of an older
    version) the wall-clock create time decides only where it does not move with the clock (not on
    Linux, where it is the boot time + the start, and the boot time moves with every clock step).
    """
    if pid <= 0:
        return "gone"
    try:
        proc = psutil.Process(pid)
        now_since_boot = start_since_boot(pid) if since_boot is not None else None
        if since_boot is not None and now_since_boot is not None:
            if abs(now_since_boot - since_boot) > TICK_TOLERANCE_S:
                return "reused"
        elif abs(proc.create_time() - created) > CREATE_TIME_TOLERANCE_S:
            # Where create times are derived from the boot time (Linux), a record without its start
            # cannot tell a reused pid from a stepped clock: not proof of death; the lease decides.
            return "unknown" if start_since_boot(pid) is not None else "reused"
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "gone"
    except psutil.NoSuchProcess:  # ZombieProcess is a NoSuchProcess too
        return "gone"
    except psutil.AccessDenied:
        return "unknown"
    return "alive"


def _process_name(proc: psutil.Process) -> str:
    try:
        name = str(proc.name())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
    return name.lower().removesuffix(".exe")


def agent_process(wrappers: tuple[str, ...], start_pid: int | None = None) -> psutil.Process:
    """The nearest ancestor of this process that is not a wrapper; the parent when all are."""
    me = psutil.Process(os.getpid() if start_pid is None else start_pid)
    parent = me.parent()
    if parent is None:
        return me
    candidate = parent
    wrapper_names = {w.lower() for w in wrappers}
    while _process_name(candidate) in wrapper_names:
        up = candidate.parent()
        if up is None or up.pid <= 1:
            break
        candidate = up
    return candidate


def orphaned_from() -> int | None:
    """The pid of the process that started this one, when it has exited since (we were re-parented
    to pid 1 or to a subreaper, which must not count as our agent); None while it is our parent."""
    parent = os.getppid()
    if parent != LAUNCHER_PID or is_init_adopter(parent):
        return LAUNCHER_PID
    return None


@dataclass(frozen=True)
class Identity:
    agent_id: str
    host: str
    boot_id: str
    pid: int
    pid_create_time: float
    server_pid: int
    server_create_time: float
    pid_start_s: float | None = None  # seconds from boot (see start_since_boot)
    server_start_s: float | None = None
    origin: Origin = "explicit"

    @property
    def id_generated(self) -> bool:
        """The id is our hash of the agent process, not AGENT_COORD_AGENT_ID, a caller's or a session's."""
        return self.origin == "process"

    @classmethod
    def detect(
        cls,
        agent_id: str | None,
        wrappers: tuple[str, ...],
        origin: Origin = "explicit",
        *,
        host: str | None = None,
        pid: int | None = None,
    ) -> Identity:
        """This process's identity on `host` (the host id, AGENT_COORD_HOST_ID; default the machine id):
        `agent_id` with its `origin`, or (without an id) one generated from the agent process. `pid`:
        the identity of that process of this user's instead (a hook process answered by the hook host,
        agent_coord/claude/hook_host.py, which checked that its parent still runs)."""
        host = host or default_host_id()
        boot = boot_id()
        me = psutil.Process(pid) if pid is not None else psutil.Process()
        orphaned = orphaned_from() if pid is None else None
        agent_since_boot: float | None
        if orphaned is not None:
            # The process that started us is gone: record it, so that every judge finds it gone (a
            # start of 0 matches no process that may take its pid), never its adopter.
            agent_pid, agent_created, agent_since_boot = orphaned, 0.0, 0.0
        else:
            agent = agent_process(wrappers, start_pid=pid)
            agent_pid, agent_created, agent_since_boot = agent.pid, agent.create_time(), start_since_boot(agent.pid)
        if not agent_id:
            origin = "process"
            # Stable for the agent process: a restarted server under the same agent gets the same id.
            # (The same formula as ever, so an upgrade keeps the id; after a clock step the coordinator
            # finds the agent's earlier id by its start counted from boot: Coordinator.open.)
            # The host name, not the host id: an upgrade keeps every generated id.
            digest = hashlib.sha256(f"{socket.gethostname()}|{boot}|{agent_pid}|{agent_created}".encode()).hexdigest()
            agent_id = f"agent-{digest[:8]}"
        return cls(
            agent_id=agent_id,
            host=host,
            boot_id=boot,
            pid=agent_pid,
            pid_create_time=agent_created,
            server_pid=me.pid,
            server_create_time=me.create_time(),
            pid_start_s=agent_since_boot,
            server_start_s=start_since_boot(me.pid),
            origin=origin,
        )

    def as_worker(self) -> WorkerProcess:
        """This process (the server doing the work) as the worker of a slot's transition."""
        return WorkerProcess(self.host, self.boot_id, self.server_pid, self.server_create_time, self.server_start_s)

    def as_agent(self, *, repo_id: int | None, lease_s: float, status: str = "active") -> Agent:
        now = time.time()
        return Agent(
            id=self.agent_id,
            host=self.host,
            boot_id=self.boot_id,
            pid=self.pid,
            pid_create_time=self.pid_create_time,
            server_pid=self.server_pid,
            server_create_time=self.server_create_time,
            repo_id=repo_id,
            status=status,
            note=None,
            started_at=now,
            last_heartbeat=now,
            lease_expires_at=now + lease_s,
            pid_start_s=self.pid_start_s,
            server_start_s=self.server_start_s,
            origin=self.origin,
        )


@dataclass(frozen=True)
class Liveness:
    alive: bool
    reason: str  # "alive", "process gone", "pid reused", "host rebooted", "lease expired", ...
    stale: bool = False  # not provably dead, but its lease lapsed
    silent: bool = False  # provably alive on this host, but its lease lapsed: it keeps its slots


def judge(agent: Agent, *, host: str, boot: str, now: float | None = None) -> Liveness:
    """Dead at once when provably so on this host; alive while its process provably runs on this
    host, whatever the lease says; otherwise (another host, a process we may not inspect) stale when
    the lease lapsed.

    A live process keeps its slots even when nothing renews its lease (its MCP server was killed, it
    is stopped in a debugger): the lease is a stand-in for a proof of life, never a proof of death.
    What ends such an agent is its process exiting, or a person (`agent-coord release --agent … --force`).
    """
    now = time.time() if now is None else now
    lapsed = agent.lease_expires_at < now
    if agent.host == host:
        if agent.boot_id != boot:
            return Liveness(False, "host rebooted since the agent registered")
        if is_init_adopter(agent.pid):
            return Liveness(False, "its agent process is gone (the server was orphaned to init, pid 1)")
        state = process_state(agent.pid, agent.pid_create_time, agent.pid_start_s)
        if state == "gone":
            return Liveness(False, f"agent process {agent.pid} is gone")
        if state == "reused":
            return Liveness(False, f"pid {agent.pid} now belongs to another process (pid reused)")
        if state == "alive" and lapsed:
            return Liveness(
                True,
                f"agent process {agent.pid} runs on this host but is silent for "
                f"{now - agent.last_heartbeat:.0f}s; it keeps its worktrees until it exits or a person "
                f"releases them (agent-coord release --agent {agent.id} --force)",
                silent=True,
            )
    if lapsed:
        return Liveness(False, f"no heartbeat for {now - agent.last_heartbeat:.1f}s (lease expired)", stale=True)
    if agent.status == "disconnected":
        return Liveness(True, "disconnected; holds its allocations until the lease lapses")
    return Liveness(True, "alive")


def server_gone(agent: Agent, *, host: str, boot: str) -> str | None:
    """Why the server that last registered `agent` is provably gone (this host only), else None.

    A live agent may outlive its server (Claude Code keeps editing after its MCP server died), so this
    never makes an agent's BUSY slots reclaimable; it only says that an ALLOCATING or RELEASING row that
    server began can never be finished by it.
    """
    return process_gone(
        "its server",
        host=agent.host,
        boot=agent.boot_id,
        pid=agent.server_pid,
        created=agent.server_create_time,
        since_boot=agent.server_start_s,
        here=(host, boot),
    )


def worker_gone(worker: SlotWorker, *, host: str, boot: str) -> str | None:
    """Why the process recorded doing a slot's transition is provably gone (this host only), else None
    (also while none is recorded): only then can that transition never finish, whatever other
    processes its agent runs."""
    if worker.process is None:
        return None
    doing = "allocating" if worker.state == SlotState.ALLOCATING else "releasing"
    return process_gone(
        f"its {doing} server",
        host=worker.process.host,
        boot=worker.process.boot_id,
        pid=worker.process.pid,
        created=worker.process.create_time,
        since_boot=worker.process.start_s,
        here=(host, boot),
    )


def process_gone(
    what: str,
    *,
    host: str,
    boot: str,
    pid: int,
    created: float,
    since_boot: float | None,
    here: tuple[str, str],
) -> str | None:
    """Why the process `what` (`pid` started at `created`, `since_boot` s after boot, on `host` in
    `boot`) is provably gone, seen from `here` (host, boot id); None while it may live, or when it ran
    on another host (unprovable)."""
    if host != here[0]:
        return None
    if boot != here[1]:
        return f"host rebooted since {what} registered"
    state = process_state(pid, created, since_boot)
    if state == "gone":
        return f"{what} process {pid} is gone"
    if state == "reused":
        return f"{what}'s pid {pid} now belongs to another process"
    return None


def same_agent(me: Identity, agent: Agent | None) -> bool:
    """Is `agent` (as registered) the agent `me` acts for? Decided from id, origin and process, never
    from what an id looks like (an explicit `claude-x` is not a session, an explicit `agent-1a2b3c4d`
    is not a generated id):

    * the same id and origin: one agent. An explicit id is the agent whichever process uses it (the
      Inspector's calls, a restarted server); a session is one Claude Code session, also resumed in a
      new process; a generated id is a hash of its agent process, so that process must match too (two
      processes whose hashes collide are two agents);
    * the same id from two origins: two agents;
    * two ids: one agent only under the same agent process when one of them was derived from a Claude
      Code session (its hooks and its own MCP server; the session after `/clear`) or both were
      generated from that process. Two explicit ids are two agents even under one parent.

    A row of an older version (origin unknown) is the same agent only under the same id."""
    if agent is None:
        return False
    if agent.origin is None:
        return agent.id == me.agent_id
    if agent.id == me.agent_id:
        if agent.origin != me.origin:
            return False
        return agent.origin != "process" or same_agent_process(me, agent)
    origins = {me.origin, agent.origin}
    derived = "session" in origins or origins == {"process"}
    return derived and same_agent_process(me, agent)


def same_agent_process(me: Identity, agent: Agent | None) -> bool:
    """Was `agent` registered from the same agent process as `me` (this host, this boot, same pid and
    create time)? Then it is the same agent under another id, e.g. a hook's `claude-<session>`."""
    return (
        agent is not None
        and agent.host == me.host
        and agent.boot_id == me.boot_id
        and agent.pid == me.pid
        and _same_start(agent.pid_create_time, agent.pid_start_s, me.pid_create_time, me.pid_start_s)
    )


def _same_start(created_a: float, since_boot_a: float | None, created_b: float, since_boot_b: float | None) -> bool:
    if since_boot_a is not None and since_boot_b is not None:
        return abs(since_boot_a - since_boot_b) <= TICK_TOLERANCE_S
    return abs(created_a - created_b) <= CREATE_TIME_TOLERANCE_S
