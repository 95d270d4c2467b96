"""API keys and scopes: who may call what. Keys are kept only as SHA-256 hashes, from the environment or a file.

The one guard turns a missing or unknown key into 401 and a key without the scope into 403; `admin` implies every
scope. Rate limiting plugs in through the `RateLimiter` protocol (the Redis-backed limiter comes later).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from litestar.connection import ASGIConnection, Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

SCOPES = frozenset({"recs:read", "offers:read", "events:write", "admin"})
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class ConfigError(ValueError):
    """The key configuration is unusable; the service refuses to start."""


def hash_key(key: str) -> str:
    """The form in which keys are stored: lowercase SHA-256 hex of the UTF-8 key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: `key_id` is a short, non-secret handle of the key (for rate limits and logs)."""

    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


OPEN_PRINCIPAL = Principal(key_id="open", scopes=SCOPES)


class RateLimiter(Protocol):
    """The hook for per-key limits: raise `recsvc.errors.RateLimited` when the principal is over budget."""

    async def check(self, principal: Principal, scope: str) -> None: ...


@dataclass(frozen=True)
class KeyRing:
    """The configured keys as (sha256 hex, scopes). Lookups compare against every hash in constant time."""

    keys: tuple[tuple[bytes, frozenset[str]], ...]
    open_access: bool = False

    @classmethod
    def from_config(cls, spec: str, file: str | None, open_access: bool) -> "KeyRing":
        """Parse `RECSVC_API_KEYS` ("key=scope+scope,...") and `RECSVC_API_KEYS_FILE` ("sha256hex scope+scope")."""
        keys: dict[str, frozenset[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, scopes = part.partition("=")
            if not sep or not key.strip():
                raise ConfigError("RECSVC_API_KEYS: expected key=scope+scope, got an entry without '=' or key")
            keys[hash_key(key.strip())] = _scopes(scopes, "RECSVC_API_KEYS")
        if file:
            try:
                text = Path(file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"RECSVC_API_KEYS_FILE: cannot read {file!r}: {exc}") from exc
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                digest, *rest = line.split(None, 1)
                scopes = rest[0] if rest else ""
                if not _HEX64.match(digest):
                    raise ConfigError(f"RECSVC_API_KEYS_FILE line {n}: expected 'sha256hex scope+scope'")
                keys[digest.lower()] = _scopes(scopes, f"RECSVC_API_KEYS_FILE line {n}")
        if not keys and not open_access:
            raise ConfigError(
                "no API keys configured: set RECSVC_API_KEYS (e.g. web=recs:read+events:write,ops=admin) or "
                "RECSVC_API_KEYS_FILE, or RECSVC_OPEN=true for a local demo without authentication"
            )
        return cls(keys=tuple((d.encode(), s) for d, s in keys.items()), open_access=open_access)

    def lookup(self, key: str) -> Principal | None:
        """The principal of a presented key, or None. Every stored hash is compared (no early exit)."""
        digest = hash_key(key).encode()
        found: Principal | None = None
        for known, scopes in self.keys:
            if hmac.compare_digest(known, digest):
                found = Principal(key_id=digest[:12].decode(), scopes=scopes)
        return found

    def authenticate(self, authorization: str | None) -> Principal:
        """Principal for an `Authorization` header value; raises 401 when missing or unknown (unless open)."""
        if self.open_access:
            return OPEN_PRINCIPAL  # the local demo: everything is allowed, and startup said so
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise NotAuthorizedException(
                "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"}
            )
        principal = self.lookup(key.strip())
        if principal is None:
            raise NotAuthorizedException("unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return principal


def _scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split("+") if s.strip())
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise ConfigError(f"{where}: unknown or missing scopes {sorted(unknown)}; known: {sorted(SCOPES)}")
    return scopes


def _authorization(connection: ASGIConnection) -> str | None:
    # straight from the ASGI scope: building Litestar's Headers object was a tenth of a small request's time
    for name, value in connection.scope["headers"]:
        if name == b"authorization" or name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


def scope_check(ring: KeyRing, limiter: RateLimiter | None = None) -> Callable[[Request], Awaitable[None]]:
    """The app's one access check, as a before-request hook: a handler declares `opt={"scope": ...}`; handlers
    without one are open. A hook rather than a guard: Litestar hands each guard a copy of the route handler
    (`copy(self)`: some 60 attributes, ~20 us on every request), a hook reads `request.route_handler` itself. It runs
    where a guard would for the app's routes (none is cached): before parameters, dependencies and the body."""

    async def check(request: Request) -> None:
        scope = request.route_handler.opt.get("scope")
        if scope is None:
            return
        principal = ring.authenticate(_authorization(request))
        if not principal.allows(scope):
            raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")
        if limiter is not None:
            await limiter.check(principal, scope)

    return check
