"""Filesystem fault campaign: agents work in their slots while someone plays tricks on the pool's
directories, and a checker proves that nothing outside the pool changed and that no byte an agent
wrote (staged content included) was lost.

    python -m bench.fault_fs                 # the full campaign: 8 seeds x 400 steps
    python -m bench.fault_fs --quick         # the CI-sized one: 1 seed x 80 steps
    python -m bench.fault_fs --seeds 20 --steps 600

The layout is what a person has: an *enclosing* repository (`~/src` kept in git, say) holding the
project and its pool root (the default `<project>.worktrees`), a sibling directory, and another
repository with a linked worktree and uncommitted edits. Agents (one coordinator each, in-process,
over one database) allocate, write files (text, binary, executable), stage, overwrite what they staged,
delete staged files from disk, commit, and release with every flag; agents die (their process row is
made to name a dead process) and validation reclaims. Between steps the tricks:

* a slot's directory swapped for a symlink to the main checkout, the sibling, the other repository, the
  enclosing repository or `/`; replaced by a regular file or by a clone of the other repository;
  deleted (moved out of the pool, so its bytes stay on disk);
* a slot's `.git` pointer redirected into the other repository;
* hand edits of `.git/worktrees/<id>`: its `gitdir` pointed at the main checkout, the sibling or
  another slot; the whole entry moved away.

After every run, two repairing validations, then the checker:

1. nothing outside the pool changed (bench/outside_check.py): the main checkout (working tree, index,
   HEAD, existing branches), the sibling, the other repository and its worktree, the enclosing
   repository (all but the project and its pool);
2. every byte an agent left on disk or in its index when the slot left its hands is still reachable:
   on disk (a slot, `.lost+found`, the moved-away directories), from a ref (`git rev-list --objects
   --all`: branches and rescue refs), or from an index git still has or a trick moved away (which keep
   their blobs from `git gc`); reflogs and other dangling objects do not count;
3. no step raised anything but a coded refusal.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from bench._common import git_env, machine, machine_line, write_results
from bench.outside_check import Outside

TRICKS = (
    "symlink_main",
    "symlink_sibling",
    "symlink_other",
    "symlink_enclosing",
    "symlink_root",
    "regular_file",
    "clone",
    "moved_out",
    "redirected_pointer",
    "admin_gitdir_main",
    "admin_gitdir_sibling",
    "admin_gitdir_other_slot",
    "admin_moved_out",
)


@dataclass
class FsConfig:
    seeds: int = 8
    steps: int = 400
    agents: int = 3
    pool_max: int = 6
    only: tuple[int, ...] = ()  # run just these seeds (to replay a failure)

    @classmethod
    def quick(cls) -> FsConfig:
        return cls(seeds=1, steps=80)


@dataclass
class Work:
    """What an agent left in one slot, as far as the agent knows: each path's bytes on disk and staged."""

    path: Path
    disk: dict[str, bytes] = field(default_factory=dict)
    index: dict[str, bytes] = field(default_factory=dict)
    tainted: bool = False  # a trick replaced what is at its path: the agent writes there no more


def git(cwd: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=check, capture_output=True, text=True, env=git_env()
    ).stdout


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def make_layout(base: Path) -> dict[str, Path]:
    enclosing = base / "enclosing"
    enclosing.mkdir(parents=True)
    git(enclosing, "init", "-q", "-b", "main")
    (enclosing / "notes.md").write_text("the person's notes, committed\n")
    git(enclosing, "add", "-A")
    git(enclosing, "commit", "-q", "-m", "enclosing")
    (enclosing / "draft.md").write_text("untracked in the enclosing repository\n")
    project = enclosing / "project"
    project.mkdir()
    git(project, "init", "-q", "-b", "main")
    for name in ("README.md", "src/app.py", "tool.sh"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"{name}\n")
    (project / ".gitignore").write_text("build/\n")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "initial")
    (project / "README.md").write_text("the person's uncommitted edit in the main checkout\n")
    (project / "scratch.txt").write_text("untracked in the main checkout: `clean -f` would delete it\n")
    sibling = base / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("a sibling directory's file\n")
    other = base / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    (other / "other.txt").write_text("other\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "other")
    git(other, "worktree", "add", "-q", "--detach", str(base / "other-wt"))
    (other / "other.txt").write_text("uncommitted in the other repository\n")
    (base / "moved-away").mkdir()
    return {
        "base": base,
        "enclosing": enclosing,
        "project": project,
        "pool": enclosing / "project.worktrees",
        "sibling": sibling,
        "other": other,
        "other_wt": base / "other-wt",
        "moved": base / "moved-away",
    }


class FsCampaign:
    def __init__(self, config: FsConfig, seed: int, base: Path) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.places = make_layout(base)
        self.db = base / "state" / "coord.db"
        self.settings = Settings(
            db=self.db,
            repo=self.places["project"],
            pool_max=config.pool_max,
            validate_every_s=3600,
            manictime_db=None,
        )
        self.held: dict[str, Work] = {}  # agent id -> its open work
        self.closed: list[tuple[str, str, bytes]] = []  # (where, path, bytes) that must survive
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self.serial = 0
        self.trace: list[str] = []  # what happened, step by step: kept in the report of a failed run

    def note(self, what: str) -> None:
        self.counts[what] += 1
        self.trace.append(what)

    async def run(self) -> dict[str, Any]:
        p = self.places
        outside = Outside(p["project"], p["sibling"], p["other"], p["other_wt"], enclosing=p["enclosing"])
        async with contextlib.AsyncExitStack() as stack:
            validator = await stack.enter_async_context(
                Coordinator.open(self.settings, register=False, agent_id="fs-validator")
            )
            agents = [
                await stack.enter_async_context(Coordinator.open(self.settings, register=True, agent_id=f"fs-{i}"))
                for i in range(self.config.agents)
            ]
            for _ in range(self.config.steps):
                step = self.rng.choices(
                    ["allocate", "work", "commit", "release", "kill", "validate", "trick"],
                    weights=[4, 10, 1, 2, 0.5, 1.5, 1.5],
                )[0]
                try:
                    if step == "kill":
                        agents = await self.kill(stack, agents)
                    else:
                        await getattr(self, step)(validator if step == "validate" else self.rng.choice(agents))
                except CoordError as exc:
                    self.note(f"{step}:{exc.code.value}")
                    self.trace.append(f"  {exc}")
                except Exception:  # anything uncoded is a finding of the campaign
                    self.violations.append(f"step {step} raised:\n{traceback.format_exc()}")
            for _ in range(2):
                await validator.validate(repair=True)
            self.note(f"final_findings:{len((await validator.validate(repair=False)).findings)}")
        for place in outside.changes():
            self.violations.append(f"outside the pool changed: {place}")
        self.violations.extend(self.lost_bytes())
        return {
            "counts": dict(self.counts),
            "violations": self.violations,
            **({"trace": self.trace} if self.violations else {}),
        }

    # ---- the agents ---------------------------------------------------------------------------

    async def allocate(self, agent: Coordinator) -> None:
        if agent.agent_id in self.held:
            return
        self.serial += 1
        got = await agent.pool.allocate(f"{agent.agent_id}-b{self.serial}")
        self.held[agent.agent_id] = Work(Path(got.path))
        self.note("allocate:ok")
        self.trace.append(f"  {agent.agent_id} got {got.worktree_id} {got.path} reused={got.reused}")

    async def work(self, agent: Coordinator) -> None:
        w = self.held.get(agent.agent_id)
        if w is None or w.tainted:
            return
        rng = self.rng
        rel = rng.choice(["a.txt", "src/app.py", "tool.sh", "bin/data.bin", "new dir/n\u00e9.txt", "README.md"])
        target = w.path / rel
        kind = rng.choice(["write", "write", "stage", "stage_then_write", "delete", "chmod"])
        self.serial += 1
        data = f"{agent.agent_id} {self.serial} {rng.random()}\n".encode()
        if rel.endswith(".bin"):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + data
        if kind in ("write", "stage_then_write", "stage"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            w.disk[rel] = data
        if kind in ("stage", "stage_then_write"):
            git(w.path, "add", "--", rel)
            w.index[rel] = w.disk[rel]
            if kind == "stage_then_write":
                self.serial += 1
                after = data + f"edited after staging {self.serial}\n".encode()
                target.write_bytes(after)
                w.disk[rel] = after
        elif kind == "delete" and target.is_file():
            target.unlink()
            w.disk.pop(rel, None)
        elif kind == "chmod" and target.is_file():
            target.chmod(target.stat().st_mode ^ 0o100)
        self.note(f"work:{kind}")
        self.trace.append(f"  {agent.agent_id} {kind} {w.path.name}/{rel} {blob_id(w.disk.get(rel, b''))[:10]}")

    async def commit(self, agent: Coordinator) -> None:
        w = self.held.get(agent.agent_id)
        if w is None or w.tainted:
            return
        git(w.path, "add", "-A")
        git(w.path, "commit", "-q", "--allow-empty", "-m", "agent commit")
        w.index = dict(w.disk)
        self.note("commit")

    async def release(self, agent: Coordinator) -> None:
        w = self.held.get(agent.agent_id)
        if w is None:
            return
        force, remove = self.rng.random() < 0.6, self.rng.random() < 0.3
        try:
            await agent.pool.release(path=str(w.path), force=force, remove=remove)
        except CoordError as exc:
            if exc.code.value == "WORKTREE_DIRTY":
                raise
            self.close(agent.agent_id)  # refused and quarantined, or gone: the slot left the agent
            raise
        self.close(agent.agent_id)
        self.note(f"release:ok:force={force}:remove={remove}")
        self.trace.append(f"  {agent.agent_id} released {w.path.name}")

    async def kill(self, stack: contextlib.AsyncExitStack, agents: list[Coordinator]) -> list[Coordinator]:
        """An agent dies: its row names a process that has exited; a new agent takes its place."""
        victim = self.rng.choice(agents)
        proc = subprocess.Popen(["true"])
        import psutil

        created = psutil.Process(proc.pid).create_time()
        proc.wait()
        with sqlite3.connect(self.db, timeout=10) as conn:
            conn.execute(
                "UPDATE agents SET pid = ?, pid_create_time = ? WHERE id = ?", (proc.pid, created, victim.agent_id)
            )
        self.close(victim.agent_id)
        self.trace.append(f"  killed {victim.agent_id}")
        self.serial += 1
        fresh = await stack.enter_async_context(
            Coordinator.open(self.settings, register=True, agent_id=f"fs-new-{self.serial}")
        )
        self.note("kill")
        return [fresh if a is victim else a for a in agents]

    async def validate(self, validator: Coordinator) -> None:
        result = await validator.validate(repair=True)
        for f in result.findings:
            self.note(f"finding:{f.kind}")
            self.trace.append(f"  {f.worktree_id} {f.path} {f.detail} -> {f.action}")

    def close(self, agent_id: str) -> None:
        w = self.held.pop(agent_id, None)
        if w is None:
            return
        self.closed += [(f"{w.path} on disk", rel, data) for rel, data in w.disk.items()]
        self.closed += [(f"{w.path} staged", rel, data) for rel, data in w.index.items()]

    # ---- the tricks ---------------------------------------------------------------------------

    async def trick(self, _: Coordinator) -> None:
        slots = [s for s in await _.store.slots() if os.path.lexists(s.path)]
        if not slots:
            return
        slot = self.rng.choice(slots)
        path = Path(slot.path)
        which = self.rng.choice(TRICKS)
        p = self.places
        self.serial += 1
        away = p["moved"] / f"{path.name}-{self.serial}"
        for w in self.held.values():
            if w.path == path:
                w.tainted = True
        admin = self.admin_of(path)
        if which.startswith("symlink_") or which in ("regular_file", "clone", "moved_out"):
            if path.is_symlink() or path.is_file():
                path.unlink()
            else:
                shutil.move(str(path), str(away))
            target = {
                "symlink_main": p["project"],
                "symlink_sibling": p["sibling"],
                "symlink_other": p["other"],
                "symlink_enclosing": p["enclosing"],
                "symlink_root": Path("/"),
            }.get(which)
            if target is not None:
                path.symlink_to(target)
            elif which == "regular_file":
                path.write_text("a file where a slot was\n")
            elif which == "clone":
                git(p["base"], "clone", "-q", str(p["other"]), str(path))
        elif which == "redirected_pointer" and (path / ".git").is_file() and not path.is_symlink():
            (path / ".git").write_text(f"gitdir: {p['other'] / '.git' / 'worktrees' / 'other-wt'}\n")
        elif which.startswith("admin_") and admin is not None:
            if which == "admin_moved_out":
                shutil.move(str(admin), str(away))
            else:
                others = [Path(s.path) for s in slots if Path(s.path) != path]
                target_git = {
                    "admin_gitdir_main": p["project"] / ".git",
                    "admin_gitdir_sibling": p["sibling"] / ".git",
                    "admin_gitdir_other_slot": (others[0] / ".git") if others else p["sibling"] / ".git",
                }[which]
                (admin / "gitdir").write_text(f"{target_git}\n")
        else:
            return
        self.note(f"trick:{which}")
        self.trace.append(f"  on {path.name} ({slot.state.value}, held by {slot.owner})")

    def admin_of(self, path: Path) -> Path | None:
        try:
            line = (path / ".git").read_text().strip()
        except OSError:
            return None
        admin = Path(line.removeprefix("gitdir: "))
        project_admin = self.places["project"] / ".git" / "worktrees"
        return admin if admin.parent == project_admin and admin.is_dir() else None

    # ---- the checker --------------------------------------------------------------------------

    def lost_bytes(self) -> list[str]:
        expected = list(self.closed)
        for w in self.held.values():
            expected += [(f"{w.path} on disk", rel, data) for rel, data in w.disk.items()]
            expected += [(f"{w.path} staged", rel, data) for rel, data in w.index.items()]
        reachable = self.reachable_blobs()
        return [
            f"lost: {rel} ({where}), {len(data)} bytes, blob {blob_id(data)}"
            for where, rel, data in expected
            if blob_id(data) not in reachable
        ]

    def reachable_blobs(self) -> set[str]:
        out = git(self.places["project"], "rev-list", "--objects", "--all")
        found = {line.split()[0] for line in out.splitlines() if line}
        # An index keeps its blobs from `git gc` while git has it (`.git/worktrees/*/index`), and one a
        # person moved away still names them: staged work there is not lost.
        indexes = [
            *(self.places["project"] / ".git" / "worktrees").glob("*/index"),
            *self.places["moved"].glob("*/index"),
        ]
        for index in indexes:
            listed = subprocess.run(
                ["git", "-C", str(self.places["project"]), "ls-files", "-s"],
                capture_output=True,
                text=True,
                env={**git_env(), "GIT_INDEX_FILE": str(index)},
            ).stdout
            found.update(line.split()[1] for line in listed.splitlines() if line)
        for root in (self.places["pool"], self.places["moved"]):
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = [d for d in dirnames if d != ".git"]
                for name in filenames:
                    full = Path(dirpath) / name
                    if full.is_file() and not full.is_symlink():
                        found.add(blob_id(full.read_bytes()))
        return found


def run_fs_campaign(config: FsConfig, base: Path) -> dict[str, Any]:
    started = time.time()
    runs: list[dict[str, Any]] = []
    for seed in config.only or range(1, config.seeds + 1):
        where = base / f"seed-{seed}"
        where.mkdir(parents=True)
        result = anyio.run(FsCampaign(config, seed, where).run)
        runs.append({"seed": seed, **result})
    counts: Counter[str] = Counter()
    for r in runs:
        counts.update(r["counts"])
    return {
        "config": vars(config),
        "seconds": round(time.time() - started, 1),
        "counts": dict(sorted(counts.items())),
        "violations": [f"seed {r['seed']}: {v}" for r in runs for v in r["violations"]],
        "traces": {r["seed"]: r["trace"] for r in runs if "trace" in r},
    }


def summarize(report: dict[str, Any]) -> str:
    c: dict[str, int] = report["counts"]

    def total(prefix: str) -> int:
        return sum(v for k, v in c.items() if k.startswith(prefix))

    tricks = {k.removeprefix("trick:"): v for k, v in c.items() if k.startswith("trick:")}
    findings = {k.removeprefix("finding:"): v for k, v in c.items() if k.startswith("finding:")}
    refusals = {k: v for k, v in c.items() if ":" in k and k.split(":")[1].isupper()}
    cfg = report["config"]
    lines = [
        f"fs campaign: {cfg['seeds']} seeds x {cfg['steps']} steps in {report['seconds']} s",
        f"  tricks {sum(tricks.values())}: {tricks}",
        f"  allocations {c.get('allocate:ok', 0)}, releases ok {total('release:ok')}, kills {c.get('kill', 0)}, "
        f"writes {total('work:')}",
        f"  findings {findings}",
        f"  refusals {refusals}",
        f"  violations: {len(report['violations'])}",
    ]
    lines += [f"    - {v}" for v in report["violations"][:20]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, action="append", default=None, help="replay this seed only")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    config = FsConfig.quick() if args.quick else FsConfig()
    if args.seeds is not None:
        config.seeds = args.seeds
    if args.steps is not None:
        config.steps = args.steps
    if args.seed:
        config.only = tuple(args.seed)
    print(machine_line(), flush=True)
    base = Path(tempfile.mkdtemp(prefix="agent-coord-fs-"))
    report = run_fs_campaign(config, base)
    print(summarize(report))
    path = write_results("fault_fs", {"machine": machine(), **report})
    print(f"\nresults: {path}")
    if not args.keep and not report["violations"]:
        shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if report["violations"] else 0)


if __name__ == "__main__":
    main()
