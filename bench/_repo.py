"""Generated repositories for the benchmarks: made once with `git fast-import`, cached under /tmp by a hash
of their parameters, cloned fresh for each run."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import time
from pathlib import Path

from bench._common import git_env

CACHE = Path("/tmp/agent-coord-bench")
GENERATOR_VERSION = 1
WORDS = tuple(
    [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "xi",
        "omicron",
        "pi",
        "rho",
        "sigma",
        "tau",
        "upsilon",
        "phi",
        "chi",
        "psi",
        "omega",
        "def",
        "class",
        "return",
        "import",
        "from",
        "yield",
        "async",
        "await",
        "with",
        "for",
        "while",
        "if",
        "else",
        "try",
        "except",
    ]
)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=git_env()
    ).stdout


def _content(rng: random.Random, n: int) -> bytes:
    lines = []
    for _ in range(n):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))))
    return ("\n".join(lines) + "\n").encode()


def generate(path: Path, *, files: int, commits: int, seed: int = 7) -> None:
    """A repository of `files` files in 100 directories and `commits` commits on `main`."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    names = [f"src/pkg{i % 100:02d}/module_{i:05d}.py" for i in range(files)]
    chunks: list[bytes] = []
    stamp = 1_700_000_000
    for c in range(commits):
        message = f"commit {c}\n".encode()
        chunks.append(b"commit refs/heads/main\n")
        chunks.append(f"mark :{c + 1}\ncommitter bench <bench@example.invalid> {stamp + c * 60} +0000\n".encode())
        chunks.append(f"data {len(message)}\n".encode() + message)
        if c > 0:
            chunks.append(f"from :{c}\n".encode())
        touched = names if c == 0 else rng.sample(names, 15)
        for name in touched:
            data = _content(rng, rng.randint(5, 30))
            chunks.append(f"M 100644 inline {name}\ndata {len(data)}\n".encode() + data + b"\n")
        if c == 0:
            for extra, data in ((".gitignore", b"build/\n.env\n"), ("README.md", b"# generated for benchmarks\n")):
                chunks.append(f"M 100644 inline {extra}\ndata {len(data)}\n".encode() + data + b"\n")
        chunks.append(b"\n")
    subprocess.run(
        ["git", "-C", str(path), "fast-import", "--quiet"], input=b"".join(chunks), check=True, env=git_env()
    )
    _git(path, "reset", "-q", "--hard", "main")
    _git(path, "gc", "-q")


def seed_repo(files: int, commits: int) -> Path:
    """The cached generated repository for these parameters (generated on first use)."""
    key = hashlib.sha256(f"{files}|{commits}|{GENERATOR_VERSION}".encode()).hexdigest()[:12]
    path = CACHE / f"seed-{files}f-{commits}c-{key}"
    if not (path / ".git" / "bench-complete").exists():
        if path.exists():
            shutil.rmtree(path)
        started = time.monotonic()
        generate(path, files=files, commits=commits)
        (path / ".git" / "bench-complete").write_text(f"{time.monotonic() - started:.1f}s\n")
    return path


def fresh_clone(files: int, commits: int, dest: Path) -> Path:
    """A clone of the cached repository (objects hardlinked, 1 s or so for 5,000 files)."""
    seed = seed_repo(files, commits)
    subprocess.run(["git", "clone", "-q", str(seed), str(dest)], check=True, env=git_env())
    return dest
