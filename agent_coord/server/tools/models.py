"""Input models of the tools. Arguments are validated against these before a handler runs (see
`server.app.ToolErrorShape`), so a wrong type or an unknown argument is an INVALID_ARGUMENT, not a crash."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", strict=True)


class AllocateInput(BaseModel):
    model_config = _STRICT
    branch: str = Field(description="branch to work on; created from `base` when it does not exist")
    base: str | None = Field(default=None, description="start point of a new branch (default: the repo's HEAD)")
    repo: str | None = Field(default=None, description="absolute path of the repository (default: configured)")
    task: str | None = Field(default=None, description="what the worktree is for, shown in status")


class ReleaseInput(BaseModel):
    model_config = _STRICT
    worktree_id: str | None = None
    path: str | None = None
    branch: str | None = None
    force: bool = False
    remove: bool = False


class HeartbeatInput(BaseModel):
    model_config = _STRICT
    status: Literal["active", "idle"] = "active"
    note: str | None = None


class StatusInput(BaseModel):
    model_config = _STRICT
    repo: str | None = None


class ValidateInput(BaseModel):
    model_config = _STRICT
    repair: bool = False
    repo: str | None = None


INPUT_MODELS: dict[str, type[BaseModel]] = {
    "allocate_worktree": AllocateInput,
    "release_worktree": ReleaseInput,
    "heartbeat": HeartbeatInput,
    "status": StatusInput,
    "validate": ValidateInput,
}
