"""Where the store lives: a SQLite file path, or a PostgreSQL URL whose password never shows.

`AGENT_COORD_DB` is read here: a `postgresql://` or `postgres://` URL selects PostgreSQL, any other
value is a file path for SQLite (a Windows path such as `C:\\Users\\me\\coord.db` included: a URL
scheme has two letters at least), and any other scheme, or a PostgreSQL URL that does not parse, is
refused. Nothing here imports the driver: the SQLite path never pays for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
PG_SCHEMES = ("postgresql", "postgres")
REDACTED = "***"


class StoreTargetError(ValueError):
    """A value of AGENT_COORD_DB that names no store agent-coord can use. Never contains a password."""


class PostgresUrl:
    """A PostgreSQL connection URL. `str()` and `repr()` hide the password; `secret_url()` is the only
    way to the full text, and only the driver's connect call gets it."""

    __slots__ = ("_parts", "_password")

    def __init__(self, url: str, *, password: str | None = None) -> None:
        found = URL_SCHEME.match(url)
        if found is None or found.group(1).lower() not in PG_SCHEMES:
            raise StoreTargetError("not a postgresql:// URL")
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a port that is not a number
        except ValueError:
            raise StoreTargetError("the PostgreSQL URL does not parse (check the host, port and quoting)") from None
        if not parts.hostname and "host" not in dict(parse_qsl(parts.query)):
            raise StoreTargetError("the PostgreSQL URL names no host")
        if parts.path.strip("/") == "" and "dbname" not in dict(parse_qsl(parts.query)):
            raise StoreTargetError("the PostgreSQL URL names no database (postgresql://user@host/DATABASE)")
        if port is not None and not 0 < port < 65536:
            raise StoreTargetError("the PostgreSQL URL's port is out of range")
        self._password = password if password is not None else (unquote(parts.password) if parts.password else None)
        self._parts = parts

    @property
    def has_password(self) -> bool:
        return self._password is not None

    def with_password(self, password: str) -> PostgresUrl:
        return PostgresUrl(urlunsplit(self._netloc(None)), password=password)

    def _netloc(self, password: str | None) -> SplitResult:
        p = self._parts
        user = quote(unquote(p.username), safe="") if p.username else ""
        auth = (
            f"{user}:{quote(password, safe='*' if password == REDACTED else '')}@"
            if password is not None
            else (f"{user}@" if user else "")
        )
        host = p.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{p.port}" if p.port is not None else ""
        return p._replace(netloc=f"{auth}{host}{port}")

    def secret_url(self) -> str:
        """The URL with its password, for the driver only. Never log or print it."""
        return urlunsplit(self._netloc(self._password))

    def redacted(self) -> str:
        return urlunsplit(self._netloc(REDACTED if self._password is not None else None))

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self._parts.query))

    def with_query(self, **values: str) -> PostgresUrl:
        merged = {**self.query(), **values}
        parts = self._parts._replace(query=urlencode(merged))
        return PostgresUrl(urlunsplit(parts), password=self._password)

    def scrub(self, text: str) -> str:
        """`text` with every form of the password taken out (driver errors can quote a connection string)."""
        if self._password:
            for form in {self._password, quote(self._password, safe=""), quote(self._password)}:
                text = text.replace(form, REDACTED)
        return text

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"PostgresUrl({self.redacted()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresUrl) and self.secret_url() == other.secret_url()

    def __hash__(self) -> int:
        return hash(self.redacted())

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.is_instance_schema(cls)


StoreTarget = Path | PostgresUrl


def parse_store_target(value: Any) -> Any:
    """A URL of a scheme we serve becomes a `PostgresUrl`; any other scheme is refused; anything else
    is left for the path field (the caller validates it as a path)."""
    if isinstance(value, PostgresUrl) or not isinstance(value, str):
        return value
    found = URL_SCHEME.match(value.strip())
    if found is None:
        return value
    scheme = found.group(1).lower()
    if scheme in PG_SCHEMES:
        return PostgresUrl(value.strip())
    raise StoreTargetError(
        f"{scheme}:// is not a store agent-coord can use; set AGENT_COORD_DB to a file path (SQLite) "
        "or a postgresql:// URL"
    )


def read_password_file(path: Path) -> str:
    """The first line of a password file (a mounted secret), without its line end."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise StoreTargetError(f"the password file cannot be read ({exc.strerror or type(exc).__name__})") from None
    line = text.splitlines()[0] if text else ""
    if not line:
        raise StoreTargetError("the password file is empty")
    return line
