"""Cross-host work of the one server holding the global validator lease: the branch claims of a host
that went away are lapsed, so that clones of the same project on other hosts may take those branches.

A host is gone for this purpose when its own validator lease (`validator@<host>`, renewed by the one
validating server on that host at every check) has lapsed and the owner's agent lease has lapsed too.
Nothing here touches a directory: the slot is only marked QUARANTINED (never handed out, branch no
longer held) with its owner kept, and the owning host's validator, when the host comes back, finds a
quarantined slot whose writer is gone and reclaims it, saving its work to a rescue ref first
(git_states.heal_quarantined). Another host never rescues it: its directory is not there.
"""

from __future__ import annotations

import time

from agent_coord.engine.context import OverEngine
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import HELD_STATES, Action, Slot

LAPSED = "lapsed"
VALIDATOR_LEASE = "validator"  # the cross-host work: lapsing the claims of hosts that went away


def host_lease(host: str) -> str:
    """The lease of the one validator of `host`: only it touches that host's directories. While it is
    held, the host is there (a host's claims lapse only once this lease has too)."""
    return f"{VALIDATOR_LEASE}@{host}"


class HostLapser(OverEngine):
    async def lapse(self, *, host_ttl_s: float) -> list[Slot]:
        """Lapse the claims of gone hosts' held slots (each a CAS on the version judged); the slots
        lapsed. `host_ttl_s` is only for the event's text: how long a host lease lasts."""
        me = self.identity.host
        candidates = [s for s in await self.store.slots(None) if s.state in HELD_STATES and s.host not in (me, None)]
        if not candidates:
            return []
        now = time.time()
        live_hosts: set[str] = set()
        for host in {s.host for s in candidates if s.host is not None}:
            lease = await self.store.lease(host_lease(host))
            if lease is not None and lease[1] >= now:
                live_hosts.add(host)
        agents = {a.id: a for a in await self.store.live_agents()}
        lapsed: list[Slot] = []
        for s in candidates:
            if s.host is None or s.host in live_hosts:
                continue
            owner = agents.get(s.owner) if s.owner else None
            if owner is not None and owner.lease_expires_at >= now:
                continue
            silent = (
                f"{now - owner.last_heartbeat:.0f}s without a heartbeat" if owner else "its agent is not registered"
            )
            reason = (
                f"host {s.host} is gone (its validator lease of {host_ttl_s:.0f}s lapsed) and agent {s.owner}'s "
                f"lease lapsed ({silent}); the branch is free, the worktree waits for its host to rescue it"
            )
            done = await self.store.lapse_claim(
                s,
                host_lease=host_lease(s.host),
                event=EventDraft(
                    Action.RECLAIM,
                    LAPSED,
                    agent_id=self.me,
                    repo_id=s.repo_id,
                    branch=s.branch,
                    detail={"reason": reason, "owner": s.owner, "host": s.host, "by_host": me},
                ),
            )
            if done is None:
                continue
            lapsed.append(done)
            if owner is not None and owner.status != "stale":
                await self.store.set_agent_status(
                    owner.id,
                    "stale",
                    server_pid=None,
                    event=EventDraft(
                        Action.AGENT_STALE,
                        "detected",
                        agent_id=owner.id,
                        repo_id=owner.repo_id,
                        detail={"reason": reason, "host": s.host},
                    ),
                )
        return lapsed
