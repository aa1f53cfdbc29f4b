"""Taking existing worktrees into the pool in one transaction (pool import)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from agent_coord.engine.store.dialect import Db, sql
from agent_coord.engine.store.records import Agent, Repo, Slot, SlotState
from agent_coord.engine.store.rows import (
    AdoptionConflictError,
    SlotAdoption,
    _append,
    _insert_agent,
    _next_token,
    _raise_if_branch_held,
    _slot_by_id,
    _slot_exists,
    _Tables,
)


class Adoption(_Tables):
    """All of a pool file's rows, or none of them."""

    async def adopt_slots(
        self, repo: Repo, adoptions: Sequence[SlotAdoption], *, lease_s: float, agents: Sequence[Agent] = ()
    ) -> list[Slot]:
        """Take existing worktrees into the pool in one transaction: all of them or none (pool import).

        A BUSY adoption gets a new fencing token and a lease of `lease_s`, like a grant. `agents` are
        holders to record when no agent of that id is registered (a registered one is never
        overwritten). A path named like a slot (``wt-07``) keeps that id when it is free, and the slot
        sequence moves past every such name, so `claim_new_slot` never picks a path already taken.
        Raises `AdoptionConflictError` for a path the store knows and `BranchHeldError` for a branch
        held by another slot; nothing is written then.
        """
        now = time.time()

        def tx(conn: Db) -> list[Slot]:
            for agent in agents:
                _insert_agent(conn, agent, on_conflict="DO NOTHING")
            named: dict[int, int] = {}  # adoption index -> number taken from its directory name
            for i, a in enumerate(adoptions):
                name = Path(a.path).name
                if name.startswith("wt-") and name[3:].isdigit() and name == f"wt-{int(name[3:]):02d}":
                    named[i] = int(name[3:])
            if named:
                move_past = sql(
                    conn,
                    sqlite="UPDATE meta SET value = MAX(value, ?) WHERE key = 'slot_seq'",
                    postgresql="UPDATE meta SET value = GREATEST(value, ?) WHERE key = 'slot_seq'",
                )
                conn.execute(move_past, (max(named.values()),))
            taken: set[str] = set()
            result: list[Slot] = []
            for i, a in enumerate(adoptions):
                known = conn.execute("SELECT id FROM slots WHERE path = ?", (a.path,)).fetchone()
                if known is not None:
                    raise AdoptionConflictError(a.path, f"already in the pool as {known['id']}")
                if a.state == SlotState.BUSY and a.branch is not None:
                    _raise_if_branch_held(conn, repo.id, a.branch)
                slot_id = f"wt-{named[i]:02d}" if i in named else None
                while slot_id is None or slot_id in taken or _slot_exists(conn, slot_id):
                    seq_row = conn.execute(
                        "UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value"
                    ).fetchone()
                    assert seq_row is not None
                    slot_id = f"wt-{int(seq_row[0]):02d}"
                taken.add(slot_id)
                held = a.state == SlotState.BUSY
                token = _next_token(conn) if held else None
                conn.execute(
                    "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
                    " lease_expires_at, since, released_at, setup_done, created_at)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (
                        slot_id,
                        repo.id,
                        a.path,
                        a.state.value,
                        a.owner if held else None,
                        a.branch,
                        token,
                        now + lease_s if held else None,
                        now if held else None,
                        None if held else now,
                        now,
                    ),
                )
                a.event.worktree_id = slot_id
                a.event.fencing_token = token
                _append(conn, a.event, now)
                adopted = _slot_by_id(conn, slot_id)
                assert adopted is not None
                result.append(adopted)
            return result

        return await self._conn.write(tx)
