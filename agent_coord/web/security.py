"""Who may see the dashboard and act on the pool.

* **Token.** Every request needs the access token: once in the query (``?token=``, as Jupyter prints
  it), which trades it for a session cookie and redirects to the same page without it, or in a header
  (``Authorization: Bearer``) for scripts. Without it, every page, asset and stream answers 401.
* **Session cookie.** HttpOnly, SameSite=Strict, scoped to the app's path; its value is a random
  session id signed with a key that lives only in this process (a restart ends every session).
* **CSRF.** Actions are POSTs that must carry the session's CSRF token in ``X-CSRF-Token`` (an HMAC
  of the session id, given to the page in a meta tag) and an ``Origin`` naming this server.
  A request authenticated by the header token carries no ambient credential and needs neither.
* **Host header.** Only the names this server was bound to (loopback by default) or allowed with
  ``--allow-host`` are served: a DNS-rebinding page on another name gets 421 before anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

COOKIE = "agent_coord_session"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a Host header or an Origin's netloc, without the port: `[::1]:8765` -> `::1`."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


@dataclass
class Guard:
    token: str
    allowed_hosts: frozenset[str]
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def for_bind(cls, token: str, bind_host: str, extra_hosts: Iterable[str] = ()) -> Guard:
        hosts = set(LOOPBACK_NAMES)
        if bind_host not in {"0.0.0.0", "::", ""}:  # noqa: S104 - compared, not bound
            hosts.add(host_name(bind_host))
        hosts.update(host_name(h) for h in extra_hosts)
        return cls(token=token, allowed_hosts=frozenset(hosts))

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def host_ok(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        return host_name(host_header) in self.allowed_hosts

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self.key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()[:43]

    def new_session(self) -> str:
        sid = secrets.token_urlsafe(18)
        return f"{sid}.{self._sign('session', sid)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id in a cookie this process signed, else None."""
        if not cookie or "." not in cookie:
            return None
        sid, _, mac = cookie.partition(".")
        return sid if hmac.compare_digest(mac, self._sign("session", sid)) else None

    def csrf_for(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def csrf_ok(self, sid: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given, self.csrf_for(sid))

    def origin_ok(self, origin: str | None, host_header: str | None, forwarded_host: str | None) -> bool:
        """The Origin of a POST must be this server as the browser addressed it (directly or via a proxy)."""
        if not origin or origin == "null":
            return False
        netloc = urlsplit(origin).netloc.lower()
        candidates = {h.strip().lower() for h in (host_header, forwarded_host) if h}
        return bool(netloc) and netloc in candidates and host_name(netloc) in self.allowed_hosts
