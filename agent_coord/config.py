"""Settings: environment variables `AGENT_COORD_*` (part of the contract), optionally a TOML file.

The TOML file (`AGENT_COORD_CONFIG`, else `<repo>/.agent-coord.toml` is not read implicitly: explicit is
safer for a tool that touches repositories) may hold the same keys in lower case.
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent_coord.platform.host_id import default_host_id, valid_host_id
from agent_coord.settings_file import read_settings_file
from agent_coord.store_target import PostgresUrl, parse_store_target, read_password_file

DEFAULT_AGENT_PATTERNS = ("claude", "@anthropic-ai/claude-code", "claude-code")
# Processes between an agent and its server that are not the agent itself (hooks run via `sh -c`).
DEFAULT_WRAPPERS = ("sh", "bash", "dash", "zsh", "fish", "env", "timeout", "uv", "uvx", "npx", "nohup")


def _state_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg)
    local = os.environ.get("LOCALAPPDATA")
    if sys.platform == "win32" and local:
        return Path(local)  # under the user's profile, whose ACL admits only that user (docs/platforms.md)
    return Path.home() / ".local" / "state"


def _default_manictime() -> Path | None:
    local = os.environ.get("LOCALAPPDATA")
    if not local:
        return None
    path = Path(local) / "Finkit" / "ManicTime" / "ManicTimeReports.db"
    return path if path.exists() else None


ENV_PREFIX = "agent_coord_"
PROJECT_MAX = 200


def _is_complex(annotation: Any) -> bool:
    """A field whose environment value is JSON (as pydantic-settings reads them): tuples, lists, dicts."""
    if get_origin(annotation) in (tuple, list, dict, set, frozenset):
        return True
    return any(_is_complex(arg) for arg in get_args(annotation) if get_origin(annotation) in (Union, UnionType))


def _toml_values(fields: Iterable[str]) -> dict[str, Any]:
    """`AGENT_COORD_CONFIG` (a TOML file), at lower priority than the environment."""
    known = set(fields)
    return {key: value for key, value in read_settings_file().items() if key in known}


def _env_values(fields: dict[str, Any]) -> dict[str, Any]:
    """`AGENT_COORD_<FIELD>` variables, names case-insensitive, complex values as JSON."""
    env = {k.lower(): v for k, v in os.environ.items() if k.lower().startswith(ENV_PREFIX)}
    values: dict[str, Any] = {}
    for name, annotation in fields.items():
        raw = env.get(ENV_PREFIX + name)
        if raw is None:
            continue
        if _is_complex(annotation):
            try:
                values[name] = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f'error parsing value for field "{name}" from AGENT_COORD_{name.upper()}') from exc
        else:
            values[name] = raw
    return values


class Settings(BaseModel):
    """Keyword arguments, then the environment, then the TOML file, then the defaults. Read by hand
    rather than with pydantic-settings, whose import alone cost a hook ~130 ms of CPU (its cloud
    secret sources, dotenv and CLI parser), and Claude Code waits for every hook."""

    # Values may carry secrets (a store URL's password): errors name the setting, never its value.
    model_config = ConfigDict(extra="ignore", validate_default=True, hide_input_in_errors=True)

    # A SQLite file, or a postgresql:// URL (agent_coord/engine/store/target.py).
    db: Path | PostgresUrl = Field(default_factory=lambda: _state_home() / "agent-coord" / "coord.db")
    # A file holding the PostgreSQL password (a mounted secret); PGPASSFILE works too, through libpq.
    db_password_file: Path | None = None
    repo: Path | None = None
    pool_root: Path | None = None
    pool_max: int = Field(default=8, ge=1, le=1000)
    agent_id: str | None = None
    # Which machine this is in a shared store (docs/hosts.md): its slots and agents are recorded under it.
    host_id: str = Field(default_factory=default_host_id)
    # The project key shared by every clone of one repository (default: root commit + normalised origin).
    project: str | None = None
    allocation_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_active_s: float = Field(default=10.0, gt=0)
    heartbeat_idle_s: float = Field(default=60.0, gt=0)
    stale_after_s: float = Field(default=300.0, gt=0)
    validate_every_s: float = Field(default=300.0, gt=0)
    contention_threshold: int = Field(default=3, ge=1)
    jitter_max_ms: int = Field(default=500, ge=0)
    retries: int = Field(default=3, ge=0)
    focus_skips_jitter: bool = True
    manictime_db: Path | None = Field(default_factory=_default_manictime)
    # ManicTime writes its reports database late; an activity that ended this long ago still counts as now.
    manictime_lag_s: float = Field(default=120.0, ge=0)
    # Which parts of an agent a focused window's title or path must show to count as that agent's.
    focus_match: tuple[Literal["worktree_path", "branch", "agent_id"], ...] = ("worktree_path", "branch", "agent_id")
    # Executables that mark the focused window as an agent or terminal program (empty: the built-in list).
    focus_programs: tuple[str, ...] = ()
    agent_process_patterns: tuple[str, ...] = DEFAULT_AGENT_PATTERNS
    wrapper_processes: tuple[str, ...] = DEFAULT_WRAPPERS
    metrics_window_s: float = Field(default=7 * 86400.0, gt=0)
    # Raw events older than this are deleted by the validating server (default: the metrics window + 1 day).
    events_keep_days: float | None = Field(default=None, gt=0)
    activity_file: Path | None = None
    branch_prefix: str = "worktree-"
    post_create: tuple[str, ...] = ()
    setup_timeout_s: float = Field(default=600.0, gt=0)
    watch_interval_s: float = Field(default=0.1, gt=0)
    # The conflict radar: seconds between passes (one process at a time computes; see engine/radar).
    radar_every_s: float = Field(default=10.0, gt=0)
    # Alerts (engine/observe/alerts.py): a command run once per alert raised or cleared (an argument
    # list, the alert as JSON on stdin), its time limit, how soon a cause that cleared may notify again,
    # and how long the pool may stay at its maximum before that is an alert.
    alert_command: tuple[str, ...] = ()
    alert_timeout_s: float = Field(default=10.0, gt=0)
    alert_cooldown_s: float = Field(default=900.0, ge=0)
    alert_pool_full_s: float = Field(default=300.0, ge=0)
    # How long a call waits for a coordination database another process keeps locked, then STORE_UNAVAILABLE.
    store_wait_s: float = Field(default=40.0, gt=0, le=3600)
    # The hook host (agent_coord/claude/hook_host.py): how long it waits for the next hook before it
    # exits; 0: hooks never start one and each answers in its own process.
    hook_host_idle_s: float = Field(default=600.0, ge=0)

    @field_validator("repo", "pool_root", "db", "db_password_file", "manictime_db", "activity_file", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("host_id", mode="before")
    @classmethod
    def _empty_host_id_is_the_default(cls, v: Any) -> Any:
        return default_host_id() if v == "" else v

    @field_validator("host_id")
    @classmethod
    def _host_id_is_a_name(cls, v: str) -> str:
        if not valid_host_id(v):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @field_validator("project")
    @classmethod
    def _project_is_printable(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if len(v) > PROJECT_MAX or not v.isprintable() or v != v.strip():
            raise ValueError(f"must be 1-{PROJECT_MAX} printable characters without surrounding spaces")
        return v

    @field_validator("db", mode="before")
    @classmethod
    def _db_is_a_file_or_a_store_url(cls, v: Any) -> Any:
        """A `postgresql://` URL selects PostgreSQL; any other URL is refused, never taken as a relative
        file name. A Windows drive path (`C:\\…`) is a path: a scheme has two letters at least."""
        return parse_store_target(v)

    @model_validator(mode="after")
    def _password_from_file(self) -> Settings:
        if self.db_password_file is None:
            return self
        if not isinstance(self.db, PostgresUrl):
            raise ValueError("AGENT_COORD_DB_PASSWORD_FILE is for a postgresql:// AGENT_COORD_DB")
        if self.db.has_password:
            raise ValueError("the PostgreSQL password is given twice (in the URL and in a file): keep one")
        self.db = self.db.with_password(read_password_file(self.db_password_file))
        return self

    def __init__(self, **values: Any) -> None:
        fields = {name: field.annotation for name, field in type(self).model_fields.items()}
        super().__init__(**{**_toml_values(fields), **_env_values(fields), **values})


class SettingsError(ValueError):
    """A setting that cannot be used. `str()` is one line that names the variable (never its value)."""

    def line(self) -> str:
        """What every entry point prints for it (command line, hooks, `serve`), with exit code 2."""
        return f"agent-coord: bad setting: {self}"


def load_settings() -> Settings:
    """The settings from the environment and `AGENT_COORD_CONFIG`, or a SettingsError saying which
    variable is wrong (never a validation traceback: a person typed it and must find it)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            name = "AGENT_COORD_" + "_".join(str(p) for p in err["loc"][:1]).upper()
            problems.append(f"{name}: {err['msg']}")  # never the value: it may carry a secret
        raise SettingsError("; ".join(problems)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"AGENT_COORD_CONFIG={os.environ.get('AGENT_COORD_CONFIG')!r}: not TOML: {exc}") from exc
    except OSError as exc:
        raise SettingsError(
            f"AGENT_COORD_CONFIG={os.environ.get('AGENT_COORD_CONFIG')!r}: {exc.strerror or exc}"
        ) from exc
    except ValueError as exc:  # a list or tuple variable that is not JSON (_env_values)
        raise SettingsError(" ".join(str(exc).split())) from exc
