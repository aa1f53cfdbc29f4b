"""The error of a git command that failed (kept apart so that the confinement guard can raise one)."""

from __future__ import annotations


class GitError(Exception):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        self.args_list = args
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(self.reason)

    @property
    def reason(self) -> str:
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        important = [ln for ln in lines if ln.startswith(("fatal:", "error:"))]
        text = "; ".join(important or lines[-2:]) or f"git exited with {self.returncode}"
        return text[:500]
