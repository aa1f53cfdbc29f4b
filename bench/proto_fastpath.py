"""Prototype (for measurement only): a warm allocation with two git processes instead of six.

Where a warm `allocate_worktree` spends its time on the 5,000-file repository (OpenTelemetry spans,
1 agent, median): `git.phase` ~38 ms of ~52 ms, made of `git status` + `git rev-list` (~23 ms, the
pre-switch check that the FREE slot is clean) running beside `for-each-ref` x2 and `rev-parse`
(~14 ms together, to decide where a new branch starts), then `git switch` (~14 ms).

This prototype keeps the allocation's semantics but:
  1. asks for the branch and its remote-tracking namesakes in one `for-each-ref` (two patterns),
     beside `rev-parse HEAD`, instead of two `for-each-ref` and a `rev-parse`;
  2. skips the pre-switch `git status` of a warm slot: a FREE slot is clean by invariant (release
     discards or refuses, validation reclaims a dirty FREE slot), and `git switch` itself refuses to
     overwrite local changes, so nothing can be lost; what changes is that untracked strays in a FREE
     slot would follow the slot to its next owner instead of going to a rescue ref first.
Cold allocations are unchanged.

`python -m bench.proto_fastpath` serves like `python -m server` with `Pool._git_phase` replaced;
`python -m bench.e2e_allocate --prototype bench.proto_fastpath` measures it beside the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def install() -> None:
    from server.engine import pool as pool_module
    from server.engine.concurrency import gather
    from server.engine.repos import confine

    async def _git_phase(self: Any, repo: Any, claim: Any, branch: str, base: str | None) -> None:
        path = confine(Path(repo.pool_root), Path(claim.slot.path))
        repo_path = Path(repo.path)
        refs_out, head = await gather(
            self.git.run(
                repo_path, "for-each-ref", "--format=%(refname)", f"refs/heads/{branch}", f"refs/remotes/*/{branch}"
            ),
            self.git.head_commit(repo_path) if base is None else pool_module._none(),
        )
        refs = [r for r in refs_out.splitlines() if r]
        exists = f"refs/heads/{branch}" in refs
        remotes = [r.removeprefix("refs/remotes/") for r in refs if r.startswith("refs/remotes/")]
        start = None if exists else (base or pool_module._default_start(remotes, head))
        if claim.warm:
            await self.git.switch(path, branch, create_from=start)
        else:
            await self._make_room(path)
            await self.git.worktree_add(repo_path, path, branch=branch, create_from=start)

    pool_module.Pool._git_phase = _git_phase  # type: ignore[method-assign]


def main() -> None:
    install()
    import anyio

    from server.app import serve_stdio

    anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
