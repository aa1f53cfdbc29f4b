"""The fault campaign's agent: a worker process that drives its own stdio server with the official
`mcp.Client` and journals every grant, release, write and commit it was acknowledged. Started by
the campaign as `python -m bench.faults --worker SPEC`; bench/faults.py says who is who.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import ROOT


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
    tolerated = set(spec.get("tolerated", []))  # codes this campaign may give on purpose (a store outage)
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
                    if code not in {
                        "POOL_EXHAUSTED",
                        "BRANCH_CONFLICT",
                        "ALLOCATION_TIMEOUT",
                        "GIT_FAILED",
                        *tolerated,
                    }:
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
                        if code not in {"WORKTREE_DIRTY", "GIT_FAILED", *tolerated}:
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
