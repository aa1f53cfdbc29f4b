"""Fault campaign: agents allocate, write, commit and release at random while a chaos loop SIGKILLs
agents and servers, some inside SQLite transactions and some between the two allocation phases; then
validation repairs, and a checker proves from the event log, the database, git and what every agent
actually received that nothing was double-granted, lost or left behind.

    python -m bench.faults             # the full campaign: 6 agents, >= 100 kills, <= ~8 min
    python -m bench.faults --quick     # the CI-sized one: 3 agents, ~15 kills, ~40 s
    python -m bench.faults --kills 200 --agents 8

Who is who. An *agent* is a worker process (`--worker`): it drives its own stdio server with the
official `mcp.Client`, like Claude Code does, so the server's parent (its agent process, by which
liveness judges it) is the worker. The server is `python -m bench.fault_server`: the real server
with a flag that says when it is inside a transaction or between allocation phases (see there).
Killing an agent kills the worker (its server then sees EOF and stops); killing a server leaves the
agent alive, and the agent starts a new server under the same agent id, as Claude Code would.

What each agent records (JSON lines, appended with one write each, so a SIGKILL loses at most the
line being written): every grant and release it was acknowledged, every file it wrote (with the
bytes), every commit. The checker then verifies:
  1. `PRAGMA integrity_check` is ok;
  2. no slot ever had two owners at once: per slot, `allocate` ok opens a grant and `release` ok,
     `reclaim` or a dropping `repair` closes it, and no grant opens while another is open;
  3. fencing tokens strictly increase from grant to grant on every slot, and no token is granted twice;
  4. every acknowledged grant and release is in the event log, with its slot and token;
  5. every file write happened while its writer held the slot (grant open, same token);
  6. after validation no slot is held: every slot of a killed agent (and of every other agent: all
     have exited by then) is FREE or QUARANTINED, or gone; a second validation finds nothing;
  7. every file any agent wrote and recorded still exists: in its worktree, in a rescue ref
     (`refs/agent-coord/rescue/*`), or committed on a branch.
It also measures how long a killed agent's slots took to be reclaimed by the servers' own background
validation, and reports slots left ALLOCATING or RELEASING by a killed server whose agent lived on.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._common import ROOT, git_env, machine, machine_line, write_results
from bench.fault_server import BETWEEN_PHASES, IN_TX, read_flag

CLOSING_REPAIRS = {"orphaned_allocation", "missing_worktree", "duplicate_path", "duplicate_branch"}
HELD = ("ALLOCATING", "BUSY", "RELEASING")


@dataclass
class CampaignConfig:
    agents: int = 6
    kills: int = 100
    max_seconds: float = 420.0
    kill_interval_s: float = 2.2
    pool_max: int = 6
    validate_every_s: float = 4.0
    post_create_sleep_s: float = 0.4  # AGENT_COORD_POST_CREATE for every other agent
    tx_delay_ms: float = 15.0  # AGENT_COORD_FAULT_TX_DELAY_MS for every other server
    git_delay_ms: float = 150.0  # AGENT_COORD_FAULT_GIT_DELAY_MS for every third server
    seed: int = 1
    base: str | None = None

    @classmethod
    def quick(cls) -> CampaignConfig:
        return cls(agents=3, kills=14, max_seconds=32.0, kill_interval_s=1.8, pool_max=4, validate_every_s=3.0)


# ---- the agent (worker process) -----------------------------------------------------------------


class Journal:
    """Append-only JSON lines, one os.write per record (O_APPEND): a kill loses at most the one in flight."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def log(self, **record: Any) -> None:
        record["t"] = time.time()
        os.write(self.fd, (json.dumps(record, sort_keys=True) + "\n").encode())


def _code(result: Any) -> str:
    return "ok" if not result.is_error else str(result.content[0].text).split(":", 1)[0]


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


async def _agent(spec: dict[str, Any]) -> None:
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    rng = random.Random(spec["seed"])
    journal = Journal(Path(spec["journal"]))
    me = spec["agent_id"]
    held: dict[str, dict[str, Any]] = {}  # worktree_id -> grant
    released_branches: list[str] = []
    stop = Path(spec["stop_file"])
    counter = 0
    server_n = 0

    async def session(client: Any) -> None:
        nonlocal counter
        # After a (re)connect, learn what this agent holds: an allocation whose answer was lost with
        # a killed server may have been granted.
        status = (await client.call_tool("status", {})).structured_content or {}
        mine = {w["worktree_id"]: w for w in status.get("worktrees", []) if w.get("agent_id") == me}
        for wt_id in list(held):
            if (
                wt_id not in mine
                or mine[wt_id]["state"] != "BUSY"
                or mine[wt_id]["fencing_token"] != held[wt_id]["token"]
            ):
                journal.log(ev="forget", wt=wt_id, token=held[wt_id]["token"], seen=mine.get(wt_id, {}).get("state"))
                del held[wt_id]
        for wt_id, w in mine.items():
            if wt_id not in held and w["state"] == "BUSY":
                held[wt_id] = {"token": w["fencing_token"], "path": w["path"], "branch": w["branch"]}
                journal.log(ev="adopt", wt=wt_id, token=w["fencing_token"], path=w["path"], branch=w["branch"])
            elif w["state"] in ("ALLOCATING", "RELEASING"):
                journal.log(ev="in_transit", wt=wt_id, state=w["state"], token=w["fencing_token"])
        while not stop.exists():
            counter += 1
            roll = rng.random()
            if len(held) < 2 and (roll < 0.45 or not held):
                if released_branches and rng.random() < 0.3:
                    branch = released_branches.pop(rng.randrange(len(released_branches)))
                else:
                    branch = f"{me}/b{counter}"
                journal.log(ev="allocate_call", branch=branch)
                res = await client.call_tool("allocate_worktree", {"branch": branch, "task": f"fault {counter}"})
                code = _code(res)
                if code == "ok":
                    sc = res.structured_content
                    held[sc["worktree_id"]] = {"token": sc["fencing_token"], "path": sc["path"], "branch": branch}
                    journal.log(
                        ev="grant", wt=sc["worktree_id"], token=sc["fencing_token"], path=sc["path"], branch=branch
                    )
                else:
                    journal.log(ev="refused", op="allocate", code=code, text=res.content[0].text[:200])
                    if code not in {"POOL_EXHAUSTED", "BRANCH_CONFLICT", "ALLOCATION_TIMEOUT", "GIT_FAILED"}:
                        journal.log(ev="unexpected", op="allocate", code=code)
            elif held:
                wt_id = rng.choice(sorted(held))
                grant = held[wt_id]
                if roll < 0.75:
                    data = rng.randbytes(rng.randint(1, 1500))
                    rel = f"notes/{me.replace('/', '_')}-{counter}.bin" if rng.random() < 0.5 else f"f-{counter}.bin"
                    target = Path(grant["path"]) / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    journal.log(
                        ev="write",
                        wt=wt_id,
                        token=grant["token"],
                        path=str(target),
                        rel=rel,
                        blob=_blob_sha(data),
                        b64=base64.b64encode(data).decode(),
                    )
                elif roll < 0.82:
                    cwd = grant["path"]
                    add = subprocess.run(["git", "-C", cwd, "add", "-A"], capture_output=True, env=spec["git_env"])
                    commit = subprocess.run(
                        ["git", "-C", cwd, "commit", "-q", "-m", f"work {counter}"],
                        capture_output=True,
                        env=spec["git_env"],
                    )
                    journal.log(ev="commit", wt=wt_id, token=grant["token"], rc=[add.returncode, commit.returncode])
                else:
                    force = rng.random() < 0.6
                    remove = rng.random() < 0.25
                    journal.log(ev="release_call", wt=wt_id, token=grant["token"], force=force, remove=remove)
                    res = await client.call_tool(
                        "release_worktree", {"worktree_id": wt_id, "force": force, "remove": remove}
                    )
                    code = _code(res)
                    if code == "ok":
                        sc = res.structured_content
                        journal.log(
                            ev="release",
                            wt=wt_id,
                            token=grant["token"],
                            rescue_ref=sc.get("rescue_ref"),
                            dirty=sc.get("dirty"),
                            removed=sc.get("removed"),
                        )
                        del held[wt_id]
                        released_branches.append(grant["branch"])
                    else:
                        journal.log(ev="refused", op="release", wt=wt_id, code=code, text=res.content[0].text[:200])
                        if code not in {"WORKTREE_DIRTY", "GIT_FAILED"}:
                            journal.log(ev="unexpected", op="release", code=code)
            if rng.random() < 0.05:
                await client.call_tool("heartbeat", {"status": "active"})
            await anyio.sleep(rng.uniform(0.0, 0.06))

    while not stop.exists():
        server_n += 1
        flag = f"{spec['flag_dir']}/{me.replace('/', '_')}-s{server_n}.flag"
        env = dict(spec["server_env"])
        env["AGENT_COORD_FAULT_FLAG"] = flag
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "bench.fault_server"], env=env, cwd=str(ROOT)
        )
        journal.log(ev="server_start", n=server_n, flag=flag)
        try:
            with open(spec["server_log"], "a") as errlog:
                async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
                    await session(client)
        except Exception as exc:  # the server was killed under us: start another, as Claude Code would
            journal.log(ev="server_lost", n=server_n, error=f"{type(exc).__name__}: {str(exc)[:200]}")
            await anyio.sleep(0.1)
    journal.log(ev="exit", held=sorted(held))


def worker_main(spec_json: str) -> None:
    import anyio

    anyio.run(_agent, json.loads(spec_json))


# ---- the campaign (driver and chaos loop) -------------------------------------------------------


@dataclass
class Agent:
    index: int
    gen: int
    agent_id: str
    proc: subprocess.Popen[bytes]
    journal: Path
    started: float
    killed_at: float | None = None


@dataclass
class Campaign:
    config: CampaignConfig
    base: Path
    repo: Path = field(init=False)
    pool: Path = field(init=False)
    db: Path = field(init=False)
    flags: Path = field(init=False)
    stop_file: Path = field(init=False)
    agents: list[Agent] = field(default_factory=list)
    retired: list[Agent] = field(default_factory=list)
    kills: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.repo = self.base / "repo"
        self.pool = self.base / "pool"
        self.db = self.base / "state" / "coord.db"
        self.flags = self.base / "flags"
        self.stop_file = self.base / "STOP"
        for d in (self.flags, self.base / "journals", self.base / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(self.config.seed)

    # -- setup --

    def make_repo(self) -> None:
        self.repo.mkdir(parents=True)
        env = git_env()
        for args in (["init", "-q", "-b", "main"],):
            subprocess.run(["git", "-C", str(self.repo), *args], check=True, env=env)
        for i in range(30):
            (self.repo / f"file{i:02d}.txt").write_text(f"line {i}\n" * (i + 1))
        (self.repo / ".gitignore").write_text("build/\n")
        subprocess.run(["git", "-C", str(self.repo), "add", "-A"], check=True, env=env)
        subprocess.run(["git", "-C", str(self.repo), "commit", "-q", "-m", "initial"], check=True, env=env)

    def server_env(self, index: int, gen: int, agent_id: str) -> dict[str, str]:
        env = git_env()
        env.update(
            {
                "AGENT_COORD_DB": str(self.db),
                "AGENT_COORD_REPO": str(self.repo),
                "AGENT_COORD_POOL_ROOT": str(self.pool),
                "AGENT_COORD_MANICTIME_DB": "",
                "AGENT_COORD_AGENT_ID": agent_id,
                "AGENT_COORD_POOL_MAX": str(self.config.pool_max),
                "AGENT_COORD_VALIDATE_EVERY_S": str(self.config.validate_every_s),
                "AGENT_COORD_JITTER_MAX_MS": "50",
                "AGENT_COORD_HEARTBEAT_ACTIVE_S": "2",
            }
        )
        if index % 2 == 1:
            env["AGENT_COORD_POST_CREATE"] = json.dumps([f"sleep {self.config.post_create_sleep_s}"])
        if (index + gen) % 2 == 0:
            env["AGENT_COORD_FAULT_TX_DELAY_MS"] = str(self.config.tx_delay_ms)
        if (index + gen) % 3 == 0:
            env["AGENT_COORD_FAULT_GIT_DELAY_MS"] = str(self.config.git_delay_ms)
        return env

    def spawn(self, index: int, gen: int) -> Agent:
        agent_id = f"a{index}g{gen}"
        journal = self.base / "journals" / f"{agent_id}.jsonl"
        spec = {
            "agent_id": agent_id,
            "seed": self.config.seed * 1000 + index * 100 + gen,
            "journal": str(journal),
            "stop_file": str(self.stop_file),
            "flag_dir": str(self.flags),
            "server_log": str(self.base / "logs" / f"{agent_id}.log"),
            "server_env": self.server_env(index, gen, agent_id),
            "git_env": git_env(),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.faults", "--worker", json.dumps(spec)],
            cwd=ROOT,
            env=git_env(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "logs" / f"{agent_id}.worker.log", "wb"),  # noqa: SIM115
        )
        return Agent(index, gen, agent_id, proc, journal, time.time())

    # -- chaos --

    def servers_of(self, agent: Agent) -> list[tuple[str, int]]:
        """(flag path, pid) of the live servers this agent started."""
        out = []
        for flag in sorted(self.flags.glob(f"{agent.agent_id}-s*.flag")):
            _, pid = read_flag(str(flag))
            if pid and _alive(pid):
                out.append((str(flag), pid))
        return out

    def kill(self, kind: str) -> dict[str, Any] | None:
        live = [a for a in self.agents if a.proc.poll() is None]
        if not live:
            return None
        agent = self.rng.choice(live)
        servers = self.servers_of(agent)
        record: dict[str, Any] = {"t": time.time(), "kind": kind, "agent": agent.agent_id}
        if kind in ("in_tx", "between_phases"):
            want = IN_TX if kind == "in_tx" else BETWEEN_PHASES
            # Aim: wait (up to 3 s) for any live server to be inside a transaction / between phases.
            deadline = time.monotonic() + 3.0
            target = None
            while time.monotonic() < deadline and target is None:
                for a in live:
                    for flag, pid in self.servers_of(a):
                        bits, _ = read_flag(flag)
                        if bits & want:
                            target = (a, flag, pid, bits)
                            break
                    if target:
                        break
                if target is None:
                    time.sleep(0.0005)
            if target is None:
                record["aimed"] = False
                kind = "server"
                record["kind"] = "server (aim missed)"
            else:
                agent, flag, pid, bits = target
                record["agent"] = agent.agent_id
                _sigkill(pid)
                record.update(server_pid=pid, flag_seen=bits, aimed=True)
                time.sleep(0.05)
                record["flag_at_death"] = read_flag(flag)[0]
                if self.rng.random() < 0.5:  # and sometimes the agent with it
                    self._kill_agent(agent)
                    record["agent_killed"] = True
                return record
        if kind in ("server", "both"):
            if servers:
                flag, pid = servers[-1]
                record["flag_seen"] = read_flag(flag)[0]
                _sigkill(pid)
                record["server_pid"] = pid
                time.sleep(0.02)
                record["flag_at_death"] = read_flag(flag)[0]
            elif kind == "server":
                kind = "agent"
        if kind in ("agent", "both"):
            self._kill_agent(agent)
            record["agent_killed"] = True
        return record

    def _kill_agent(self, agent: Agent) -> None:
        _sigkill(agent.proc.pid)
        agent.proc.wait()
        agent.killed_at = time.time()

    def replace_dead(self) -> None:
        for i, a in enumerate(self.agents):
            if a.proc.poll() is not None:
                self.retired.append(a)
                self.agents[i] = self.spawn(a.index, a.gen + 1)

    def run(self) -> dict[str, Any]:
        cfg = self.config
        self.make_repo()
        started = time.time()
        self.agents = [self.spawn(i, 0) for i in range(cfg.agents)]
        time.sleep(2.0)  # let the first servers come up
        kinds = ["agent", "server", "both", "in_tx", "between_phases"]
        weights = [0.2, 0.2, 0.15, 0.25, 0.2]
        progress = Progress(self.base / "journals")
        while len(self.kills) < cfg.kills and time.time() - started < cfg.max_seconds:
            # Pace the kills by the agents' progress as well as by time: a kill every interval, but only
            # once the agents, restarted servers included, have done about one operation each since the
            # last one (so a slow machine gets fewer, not emptier, rounds), and never more than 4
            # intervals apart.
            wait_until = time.time() + self.rng.uniform(0.5, 1.5) * cfg.kill_interval_s
            give_up = time.time() + 4 * cfg.kill_interval_s
            mark = progress.count()
            while time.time() < give_up and time.time() - started < cfg.max_seconds:
                if time.time() >= wait_until and progress.count() - mark >= cfg.agents:
                    break
                time.sleep(0.05)
            record = self.kill(self.rng.choices(kinds, weights)[0])
            if record is not None:
                self.kills.append(record)
            self.replace_dead()
        chaos_s = time.time() - started
        # Let the survivors run on a moment, then see what killed servers left in transit.
        time.sleep(min(3.0, cfg.validate_every_s))
        in_transit = self.in_transit_snapshot()
        self.stop_file.write_text("stop\n")
        deadline = time.time() + 20
        for a in self.agents:
            try:
                a.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _sigkill(a.proc.pid)
                a.proc.wait()
        self.retired.extend(self.agents)
        # Servers of exited agents stop on EOF; make sure none is left before validating.
        _wait_servers_gone(self.flags, timeout=15)
        return {"chaos_s": round(chaos_s, 1), "in_transit_at_end": in_transit}

    def in_transit_snapshot(self) -> list[dict[str, Any]]:
        """Slots in ALLOCATING/RELEASING for more than a few seconds whose agent is still alive."""
        live = {a.agent_id for a in self.agents if a.proc.poll() is None}
        now = time.time()
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)) as conn:
            rows = conn.execute(
                "SELECT id, state, owner, since, fencing_token FROM slots WHERE state IN ('ALLOCATING','RELEASING')"
            ).fetchall()
        return [
            {"slot": r[0], "state": r[1], "owner": r[2], "age_s": round(now - (r[3] or now), 1), "token": r[4]}
            for r in rows
            if r[2] in live and now - (r[3] or now) > 3.0
        ]


class Progress:
    """Counts the agents' completed operations (grants, releases, writes, commits, refusals) as they
    append them to their journals, reading only what was added since the last look."""

    WORK = ('"ev": "grant"', '"ev": "release"', '"ev": "write"', '"ev": "commit"', '"ev": "refused"')

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.total = 0

    def count(self) -> int:
        for path in self.directory.glob("*.jsonl"):
            offset = self.offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1
            self.offsets[path] = offset + end
            text = chunk[:end].decode("utf-8", "replace")
            self.total += sum(text.count(w) for w in self.WORK)
        return self.total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _wait_servers_gone(flags: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [read_flag(str(f))[1] for f in flags.glob("*.flag")]
        if not any(p and _alive(p) for p in pids):
            return
        time.sleep(0.1)
    for f in flags.glob("*.flag"):
        pid = read_flag(str(f))[1]
        if pid and _alive(pid):
            _sigkill(pid)


# ---- validation and the checker ----------------------------------------------------------------


def final_validation(db: Path, repo: Path, pool: Path) -> dict[str, Any]:
    """`validate --repair` in process (an observer, not an agent), then a dry run that must find nothing."""
    import anyio

    from server.config import Settings
    from server.engine.coordinator import Coordinator

    settings = Settings(db=db, repo=repo, pool_root=pool, manictime_db=None)

    async def go() -> dict[str, Any]:
        async with Coordinator.open(settings, register=False, agent_id="fault-checker") as coord:
            t0 = time.perf_counter()
            repaired = await coord.validate(repair=True)
            first_ms = (time.perf_counter() - t0) * 1000
            again = await coord.validate(repair=True)
            dry = await coord.validate(repair=False)
            return {
                "repair_findings": [f"{f.kind}:{f.action}" for f in repaired.findings],
                "repair_ms": round(first_ms, 1),
                "second_repair_findings": [f"{f.kind}:{f.action}" for f in again.findings],
                "dry_run_findings": [f"{f.kind}:{f.detail}" for f in dry.findings],
                "skipped": [f.kind for f in dry.skipped],
            }

    return anyio.run(go)


def _journal(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the one line a kill cut short
    return out


def grant_intervals(
    events: Sequence[Mapping[str, Any]],
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str], int]:
    """Per slot, in commit order: `allocate` ok opens a grant; `release` ok, `reclaim` or a dropping
    `repair` closes it. Returns the grants by (slot, token), the violations (a grant opened while
    another is open, a token not above the slot's previous one or granted twice, a close with another
    token), and how many closes found nothing open (rolled-back claims, cleaned FREE slots)."""
    violations: list[str] = []
    open_grant: dict[str, dict[str, Any]] = {}
    last_token: dict[str, int] = {}
    intervals: dict[tuple[str, int], dict[str, Any]] = {}
    granted_tokens: set[int] = set()
    closes_without_open = 0
    for e in events:
        wt, action, outcome, token = e["worktree_id"], e["action"], e["outcome"], e["fencing_token"]
        if wt is None:
            continue
        if action == "allocate" and outcome == "ok":
            if wt in open_grant:
                violations.append(
                    f"double grant: {wt} granted to {e['agent_id']} (token {token}, event {e['id']}) while held by "
                    f"{open_grant[wt]['agent']} (token {open_grant[wt]['token']}, event {open_grant[wt]['id']})"
                )
            if token in granted_tokens:
                violations.append(f"token {token} granted twice (event {e['id']})")
            if wt in last_token and token <= last_token[wt]:
                violations.append(f"token not increasing on {wt}: {token} after {last_token[wt]} (event {e['id']})")
            granted_tokens.add(token)
            last_token[wt] = token
            grant = {"id": e["id"], "ts": e["ts"], "agent": e["agent_id"], "token": token, "close": None}
            open_grant[wt] = grant
            intervals[(wt, token)] = grant
            continue
        closing = (
            (action == "release" and outcome == "ok")
            or action == "reclaim"
            or (action == "repair" and json.loads(e["detail"] or "{}").get("kind") in CLOSING_REPAIRS)
        )
        if not closing:
            continue
        grant = open_grant.get(wt)
        if grant is None:
            closes_without_open += 1
            continue
        if token is not None and token != grant["token"]:
            violations.append(
                f"{action} of {wt} with token {token} while the open grant has token {grant['token']} (event {e['id']})"
            )
            continue
        grant["close"] = {"id": e["id"], "ts": e["ts"], "action": action, "outcome": outcome}
        del open_grant[wt]
    return intervals, violations, closes_without_open


def check(campaign: Campaign, validation: dict[str, Any]) -> dict[str, Any]:
    db, repo = campaign.db, campaign.repo
    violations: list[str] = []
    stats: dict[str, Any] = {}
    with contextlib.closing(sqlite3.connect(str(db), timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        events = conn.execute(
            "SELECT id, ts, agent_id, action, worktree_id, outcome, fencing_token, detail FROM events ORDER BY id"
        ).fetchall()
        slots = conn.execute("SELECT * FROM slots").fetchall()
    if integrity != "ok":
        violations.append(f"integrity_check: {integrity}")

    # 2, 3: grant intervals and tokens, per slot, in commit order (event ids)
    intervals, interval_violations, closes_without_open = grant_intervals(events)
    violations += interval_violations
    stats["events"] = len(events)
    stats["grants"] = len(intervals)
    stats["closes_without_grant"] = closes_without_open

    # 4, 5: what the agents were told and did
    journals = {p.stem: _journal(p) for p in sorted((campaign.base / "journals").glob("*.jsonl"))}
    release_events = {
        (e["worktree_id"], e["fencing_token"]) for e in events if e["action"] == "release" and e["outcome"] == "ok"
    }
    acked_grants = acked_releases = 0
    writes: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    for agent_id, records in journals.items():
        for r in records:
            if r["ev"] == "grant":
                acked_grants += 1
                g = intervals.get((r["wt"], r["token"]))
                if g is None:
                    violations.append(f"acknowledged grant not in the log: {agent_id} {r['wt']} token {r['token']}")
                elif g["agent"] != agent_id:
                    violations.append(f"grant {r['wt']} token {r['token']} logged for {g['agent']}, told to {agent_id}")
            elif r["ev"] == "release":
                acked_releases += 1
                if (r["wt"], r["token"]) not in release_events:
                    violations.append(f"acknowledged release not in the log: {agent_id} {r['wt']} token {r['token']}")
            elif r["ev"] == "write":
                r["agent"] = agent_id
                writes.append(r)
                g = intervals.get((r["wt"], r["token"]))
                if g is None or g["agent"] != agent_id:
                    violations.append(
                        f"write by {agent_id} to {r['wt']} under token {r['token']} that was never granted"
                    )
                elif g["ts"] > r["t"] or (g["close"] is not None and g["close"]["ts"] < r["t"] - 0.001):
                    violations.append(
                        f"write by {agent_id} to {r['wt']} at {r['t']:.3f} outside its grant "
                        f"[{g['ts']:.3f}, {g['close']['ts'] if g['close'] else 'open'}] ({r['rel']})"
                    )
            elif r["ev"] == "unexpected":
                unexpected.append({"agent": agent_id, **r})
    stats["acknowledged_grants"] = acked_grants
    stats["acknowledged_releases"] = acked_releases
    stats["writes"] = len(writes)
    if unexpected:
        violations.append(f"unexpected error codes: {unexpected[:5]}")

    # 6: nothing held after validation; killed agents' slots recovered
    held_after = [dict(s) for s in slots if s["state"] in HELD]
    for s in held_after:
        violations.append(f"after validation {s['id']} is still {s['state']} (owner {s['owner']})")
    killed = {a.agent_id: a.killed_at for a in campaign.retired if a.killed_at is not None}
    recovery: list[float] = []
    unrecovered_during_run = 0
    killed_slots = 0
    for (wt, _token), g in intervals.items():
        killed_at = killed.get(g["agent"])
        if killed_at is None or g["ts"] > killed_at:
            continue
        if g["close"] is not None and g["close"]["ts"] < killed_at:
            continue
        killed_slots += 1
        state = next((s["state"] for s in slots if s["id"] == wt), "gone")
        if state not in ("FREE", "QUARANTINED", "gone"):
            violations.append(f"slot {wt} of killed agent {g['agent']} is {state} after validation")
        if g["close"] is not None:
            recovery.append(g["close"]["ts"] - killed_at)
        else:
            unrecovered_during_run += 1
    stats["killed_agents"] = len(killed)
    stats["killed_agents_slots"] = killed_slots
    stats["recovered_by_background_validation"] = len(recovery)
    stats["recovered_only_by_final_validation"] = unrecovered_during_run
    stats["recovery_s"] = {
        "p50": round(sorted(recovery)[len(recovery) // 2], 2) if recovery else None,
        "max": round(max(recovery), 2) if recovery else None,
        "bound_s": round(2.5 * campaign.config.validate_every_s + 2, 1),
    }
    if recovery and max(recovery) > 2.5 * campaign.config.validate_every_s + 2:
        violations.append(
            f"a killed agent's slot took {max(recovery):.1f} s to be reclaimed "
            f"(validate_every_s={campaign.config.validate_every_s})"
        )
    if validation["dry_run_findings"]:
        violations.append(f"validation did not converge: {validation['dry_run_findings'][:5]}")

    # 7: every recorded file still exists somewhere safe
    env = git_env()
    rescue_refs = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()

    def blobs(*rev_args: str) -> set[str]:
        if not rev_args:
            return set()
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-list", "--objects", *rev_args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        return {line.split(" ", 1)[0] for line in out.splitlines()}

    in_rescue = blobs(*rescue_refs)
    in_branches = blobs("--branches")
    lost_and_found = campaign.pool / ".lost+found"
    where: dict[str, int] = {"worktree": 0, "rescue_ref": 0, "branch": 0, "lost+found": 0}
    lost: list[dict[str, Any]] = []
    for w in writes:
        data = base64.b64decode(w["b64"])
        path = Path(w["path"])
        if path.is_file() and path.read_bytes() == data:
            where["worktree"] += 1
        elif w["blob"] in in_rescue:
            where["rescue_ref"] += 1
        elif w["blob"] in in_branches:
            where["branch"] += 1
        elif lost_and_found.is_dir() and any(
            p.is_file() and p.read_bytes() == data for p in lost_and_found.rglob(Path(w["rel"]).name)
        ):
            where["lost+found"] += 1
            violations.append(f"file only in .lost+found, not in a worktree or rescue ref: {w['agent']} {w['rel']}")
        else:
            lost.append({k: w[k] for k in ("agent", "wt", "token", "rel", "path", "blob", "t")})
    for item in lost:
        violations.append(f"lost file: {item}")
    stats["files"] = where
    stats["rescue_refs"] = len(rescue_refs)
    return {"violations": violations, "stats": stats, "integrity": integrity}


def run_campaign(config: CampaignConfig, base: Path) -> dict[str, Any]:
    started = time.time()
    campaign = Campaign(config, base)
    try:
        run = campaign.run()
    finally:
        for a in campaign.agents:
            if a.proc.poll() is None:
                _sigkill(a.proc.pid)
                a.proc.wait()
        _wait_servers_gone(campaign.flags, timeout=10)
    validation = final_validation(campaign.db, campaign.repo, campaign.pool)
    result = check(campaign, validation)
    kinds: dict[str, int] = {}
    for k in campaign.kills:
        kinds[k["kind"]] = kinds.get(k["kind"], 0) + 1
    in_tx_deaths = sum(1 for k in campaign.kills if k.get("flag_at_death", 0) & IN_TX)
    between_deaths = sum(1 for k in campaign.kills if k.get("flag_at_death", 0) & BETWEEN_PHASES)
    agents_killed = sum(1 for k in campaign.kills if k.get("agent_killed"))
    servers_killed = sum(1 for k in campaign.kills if k.get("server_pid"))
    return {
        "config": asdict(config),
        "seconds": round(time.time() - started, 1),
        **run,
        "kills": len(campaign.kills),
        "kill_kinds": kinds,
        "agents_killed": agents_killed,
        "servers_killed": servers_killed,
        "died_inside_transaction": in_tx_deaths,
        "died_between_phases": between_deaths,
        "validation": validation,
        **result,
        "kill_log": campaign.kills,
    }


def summarize(report: dict[str, Any]) -> str:
    s = report["stats"]
    lines = [
        f"campaign: {report['seconds']} s ({report['chaos_s']} s of chaos), {report['kills']} kills "
        f"{report['kill_kinds']}",
        f"  agents killed {report['agents_killed']}, servers killed {report['servers_killed']}, "
        f"died inside a transaction {report['died_inside_transaction']}, "
        f"between allocation phases {report['died_between_phases']}",
        f"  events {s['events']}, grants {s['grants']} (acknowledged {s['acknowledged_grants']}), "
        f"releases acknowledged {s['acknowledged_releases']}, files written {s['writes']} -> {s['files']}, "
        f"rescue refs {s['rescue_refs']}",
        f"  killed agents {s['killed_agents']} holding {s['killed_agents_slots']} slots: "
        f"{s['recovered_by_background_validation']} reclaimed by the servers' validation "
        f"(p50 {s['recovery_s']['p50']} s, max {s['recovery_s']['max']} s), "
        f"{s['recovered_only_by_final_validation']} by the final one",
        f"  integrity_check {report['integrity']}; final repair {len(report['validation']['repair_findings'])} "
        f"findings in {report['validation']['repair_ms']} ms; "
        f"dry run after: {report['validation']['dry_run_findings']}",
        f"  left in transit by killed servers of live agents: {report['in_transit_at_end']}",
        f"  violations: {len(report['violations'])}",
    ]
    lines += [f"    - {v}" for v in report["violations"][:30]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI-sized campaign (~40 s)")
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--agents", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--base-dir", default=None, help="where the campaign's files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the campaign directory for inspection")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args.worker)
        return
    config = CampaignConfig.quick() if args.quick else CampaignConfig()
    for name in ("kills", "agents", "seed", "max_seconds"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    print(machine_line(), flush=True)
    base = Path(tempfile.mkdtemp(prefix="agent-coord-faults-", dir=args.base_dir))
    print(f"campaign directory: {base}", flush=True)
    report = run_campaign(config, base)
    print(summarize(report))
    path = write_results("faults", {"machine": machine(), **report})
    print(f"\nresults: {path}")
    if not args.keep and not report["violations"]:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if report["violations"] else 0)


if __name__ == "__main__":
    main()
