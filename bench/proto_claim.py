"""Prototype (for measurement only): phase 1 chooses the FREE slot inside its own transaction.

Today `Pool._claim` reads the slots, picks one FREE slot by a deterministic order (warmest first when
optimistic, coldest first when pessimistic) and then compare-and-swaps that one. Every agent that
allocates at the same moment picks the *same* slot, so all but one lose the CAS and go round again
(with backoff when pessimistic); at 16 agents a third of warm allocations lost at least once and some
lost four times and were refused with ALLOCATION_TIMEOUT while FREE slots stood idle.

Here the choice is made in the claiming `BEGIN IMMEDIATE` transaction (`SELECT … ORDER BY … LIMIT 1`
then the same `UPDATE … WHERE state = 'FREE'`): the write lock is held from the choice to the update,
so the claim cannot lose while a FREE slot exists, and one transaction replaces a read plus a write
per attempt. Same order (warmest/coldest), same fencing token, same row, same branch check.

`python -m bench.proto_claim` serves exactly like `python -m server` with `Pool._claim` replaced;
`python -m bench.e2e_allocate --prototype` runs it beside the real server in the same run.
"""

from __future__ import annotations

import time
from typing import Any

import aiosqlite


async def claim_any_free_slot(
    store: Any, repo: Any, *, owner: str, branch: str, task: str | None, lease_s: float, warmest: bool
) -> Any:
    """FREE → ALLOCATING on the warmest (or coldest) FREE slot, chosen under the write lock. None: no FREE slot."""
    from bench.proto_onehop import _slot
    from server.engine.records import HELD_STATES
    from server.engine.store import BranchHeldError

    now = time.time()
    order = "DESC" if warmest else "ASC"

    async def tx(conn: aiosqlite.Connection) -> Any:
        held = await (
            await conn.execute(
                "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)",
                (repo.id, branch, *HELD_STATES),
            )
        ).fetchone()
        if held is not None:
            raise BranchHeldError(_slot(held))
        row = await (
            await conn.execute(
                "SELECT id FROM slots WHERE repo_id = ? AND state = 'FREE'"
                f" ORDER BY COALESCE(released_at, 0) {order}, id LIMIT 1",
                (repo.id,),
            )
        ).fetchone()
        if row is None:
            return None
        token_row = await (
            await conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value")
        ).fetchone()
        token = int(token_row[0])
        await conn.execute(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
            " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
            " WHERE id = ? AND state = 'FREE'",
            (owner, branch, token, now + lease_s, now, task, row["id"]),
        )
        new = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (row["id"],))).fetchone()
        return _slot(new)

    return await store._conn.write(tx)


def install() -> None:
    from server.engine import pool as pool_module
    from server.engine.errors import CoordError, ErrorCode
    from server.engine.store import BranchHeldError

    async def _claim(
        self: Any, repo: Any, branch: str, task: str | None, warmest: bool, strategy: str, started: float
    ) -> Any:
        lease = self.settings.stale_after_s
        try:
            slot = await claim_any_free_slot(
                self.store, repo, owner=self.me, branch=branch, task=task, lease_s=lease, warmest=warmest
            )
            if slot is not None:
                return pool_module._Claim(slot, warm=True)
            slot = await self.store.claim_new_slot(
                repo, owner=self.me, branch=branch, task=task, lease_s=lease, pool_max=self.settings.pool_max
            )
        except BranchHeldError as exc:
            await self._refuse(repo, branch, started, self._conflict_from_slot(exc.holder))
        if slot is None:
            await self._refuse(
                repo,
                branch,
                started,
                CoordError(ErrorCode.POOL_EXHAUSTED, f"all {self.settings.pool_max} slots of {repo.path} are in use"),
            )
        return pool_module._Claim(slot, warm=False)

    pool_module.Pool._claim = _claim  # type: ignore[method-assign]


def main() -> None:
    install()
    import anyio

    from server.app import serve_stdio

    anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
