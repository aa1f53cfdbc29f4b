"""The fault campaign's driver and chaos loop: a repository, agents spawned and respawned, and kills of
agents and servers (some aimed inside a transaction or between allocation phases), paced by progress.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_coord.store_target import PostgresUrl
from bench._common import ROOT, git_env
from bench.fault_processes import alive, sigkill, wait_servers_gone
from bench.fault_server import BETWEEN_PHASES, IN_TX, read_flag
from bench.outside_check import Outside
from bench.store_read import rows


@dataclass
class CampaignConfig:
    agents: int = 6
    kills: int = 100
    max_seconds: float = 420.0
    # Fewer kills than this by max_seconds (a loaded machine): the chaos goes on up to this much longer
    # to reach them, so a slow run tests as many kinds of death, only later.
    min_kills: int = 0
    overtime_s: float = 0.0
    kill_interval_s: float = 2.2
    pool_max: int = 6
    validate_every_s: float = 4.0
    post_create_sleep_s: float = 0.4  # AGENT_COORD_POST_CREATE for every other agent
    tx_delay_ms: float = 15.0  # AGENT_COORD_FAULT_TX_DELAY_MS for every other server
    git_delay_ms: float = 150.0  # AGENT_COORD_FAULT_GIT_DELAY_MS for every third server
    seed: int = 1
    base: str | None = None
    # The store: a postgresql:// URL (an empty database), or None for a SQLite file in the campaign's directory.
    store_url: str | None = None
    # Seconds into the chaos at which `Campaign.store_outage` (a server restart) is called; None: never.
    # The agents then count STORE_UNAVAILABLE as an answer they may get.
    store_outage_at_s: float | None = None

    @classmethod
    def quick(cls) -> CampaignConfig:
        return cls(
            agents=3,
            kills=14,
            max_seconds=32.0,
            min_kills=6,
            overtime_s=150.0,
            kill_interval_s=1.8,
            pool_max=4,
            validate_every_s=3.0,
        )


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
    # The main checkout (with a person's uncommitted edit and untracked file) and a sibling directory,
    # fingerprinted before the chaos: the checker proves nothing there changed.
    outside: Outside | None = None
    # Takes the store's server away and brings it back (blocking); see CampaignConfig.store_outage_at_s.
    store_outage: Callable[[], None] | None = None
    outages: list[dict[str, float]] = field(default_factory=list)

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
        (self.repo / "file00.txt").write_text("a person's uncommitted edit in the main checkout\n")
        (self.repo / "notes.txt").write_text("untracked in the main checkout\n")
        sibling = self.base / "sibling"
        sibling.mkdir(exist_ok=True)
        (sibling / "keep.txt").write_text("a sibling directory's file\n")
        self.outside = Outside(self.repo, sibling)

    @property
    def store(self) -> Path | PostgresUrl:
        return PostgresUrl(self.config.store_url) if self.config.store_url else self.db

    def server_env(self, index: int, gen: int, agent_id: str) -> dict[str, str]:
        env = git_env()
        env.update(
            {
                "AGENT_COORD_DB": self.config.store_url or str(self.db),
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
            "tolerated": ["STORE_UNAVAILABLE"] if self.config.store_outage_at_s is not None else [],
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
            if pid and alive(pid):
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
                sigkill(pid)
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
                sigkill(pid)
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
        sigkill(agent.proc.pid)
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
        outage = None
        if self.store_outage is not None and cfg.store_outage_at_s is not None:
            outage = threading.Timer(cfg.store_outage_at_s, self._outage, (self.store_outage,))
            outage.start()

        def chaos_on() -> bool:
            limit = cfg.max_seconds + (cfg.overtime_s if len(self.kills) < cfg.min_kills else 0.0)
            return time.time() - started < limit

        while len(self.kills) < cfg.kills and chaos_on():
            # Pace the kills by the agents' progress as well as by time: a kill every interval, but only
            # once the agents, restarted servers included, have done about one operation each since the
            # last one (so a slow machine gets fewer, not emptier, rounds), and never more than 4
            # intervals apart.
            wait_until = time.time() + self.rng.uniform(0.5, 1.5) * cfg.kill_interval_s
            give_up = time.time() + 4 * cfg.kill_interval_s
            mark = progress.count()
            while time.time() < give_up and chaos_on():
                if time.time() >= wait_until and progress.count() - mark >= cfg.agents:
                    break
                time.sleep(0.05)
            record = self.kill(self.rng.choices(kinds, weights)[0])
            if record is not None:
                self.kills.append(record)
            self.replace_dead()
        chaos_s = time.time() - started
        if outage is not None:
            outage.join()
            # The store came back: let the agents show it (a grant after it) before they are stopped,
            # however long a loaded machine's servers take to reconnect; bounded.
            back = sum(self.outages[0].values()) if self.outages else time.time()
            deadline = time.time() + 90
            while not granted_since(self.base / "journals", back) and time.time() < deadline:
                time.sleep(0.2)
        # Let the survivors run on a moment, then see what killed servers left in transit.
        time.sleep(min(3.0, cfg.validate_every_s))
        in_transit = self.in_transit_snapshot()
        self.stop_file.write_text("stop\n")
        deadline = time.time() + 20
        for a in self.agents:
            try:
                a.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                sigkill(a.proc.pid)
                a.proc.wait()
        self.retired.extend(self.agents)
        # Servers of exited agents stop on EOF; make sure none is left before validating.
        wait_servers_gone(self.flags, timeout=15)
        return {"chaos_s": round(chaos_s, 1), "in_transit_at_end": in_transit}

    def _outage(self, take_away: Callable[[], None]) -> None:
        began = time.time()
        take_away()
        self.outages.append({"at": began, "seconds": round(time.time() - began, 2)})

    def in_transit_snapshot(self) -> list[dict[str, Any]]:
        """Slots in ALLOCATING/RELEASING for more than a few seconds whose agent is still alive."""
        live = {a.agent_id for a in self.agents if a.proc.poll() is None}
        now = time.time()
        found = rows(
            self.store,
            "SELECT id, state, owner, since, fencing_token FROM slots WHERE state IN ('ALLOCATING','RELEASING')",
        )
        return [
            {
                "slot": r["id"],
                "state": r["state"],
                "owner": r["owner"],
                "age_s": round(now - (r["since"] or now), 1),
                "token": r["fencing_token"],
            }
            for r in found
            if r["owner"] in live and now - (r["since"] or now) > 3.0
        ]


def granted_since(journals: Path, since: float) -> bool:
    """Whether any agent's journal records a grant after `since` (a kill may cut a last line short)."""
    for path in journals.glob("*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            if '"ev": "grant"' in line:
                with contextlib.suppress(ValueError):
                    if json.loads(line)["t"] > since:
                        return True
    return False


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
