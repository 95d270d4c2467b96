"""API keys and scopes: who may call what. Keys are kept only as SHA-256 hashes, from the environment or a file.

Guards turn a missing or unknown key into 401 and a key without the scope into 403; `admin` implies every scope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

SCOPES = frozenset({"recs:read", "offers:read", "events:write", "admin"})


class ConfigError(ValueError):
    """The key configuration is unusable; the service refuses to start."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRing:
    """sha256(key) -> scopes. Looking up by the hash of the presented key keeps the secret out of timing."""

    keys: dict[str, frozenset[str]]
    open_access: bool = False

    @classmethod
    def from_config(cls, spec: str, file: str | None, open_access: bool) -> "KeyRing":
        keys: dict[str, frozenset[str]] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, scopes = part.partition("=")
            if not sep or not key:
                raise ConfigError(f"RECSVC_API_KEYS: expected key=scope+scope, got {part!r}")
            keys[hash_key(key)] = _scopes(scopes, "RECSVC_API_KEYS")
        if file:
            for n, line in enumerate(Path(file).read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip() or line.startswith("#"):
                    continue
                digest, _, scopes = line.strip().partition(" ")
                if len(digest) != 64:
                    raise ConfigError(f"RECSVC_API_KEYS_FILE line {n}: expected 'sha256hex scope+scope'")
                keys[digest.lower()] = _scopes(scopes, f"RECSVC_API_KEYS_FILE line {n}")
        if not keys and not open_access:
            raise ConfigError(
                "no API keys configured: set RECSVC_API_KEYS (e.g. web=recs:read+events:write,ops=admin) or "
                "RECSVC_API_KEYS_FILE, or RECSVC_OPEN=true for a local demo without authentication"
            )
        return cls(keys=keys, open_access=open_access)

    def scopes_for(self, authorization: str | None) -> frozenset[str]:
        if self.open_access and not authorization:
            return SCOPES
        if not authorization or not authorization.startswith("Bearer "):
            raise NotAuthorizedException("missing API key: send 'Authorization: Bearer <key>'")
        scopes = self.keys.get(hash_key(authorization[7:].strip()))
        if scopes is None:
            if self.open_access:
                return SCOPES
            raise NotAuthorizedException("unknown API key")
        return scopes


def _scopes(text: str, where: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split("+") if s.strip())
    unknown = scopes - SCOPES
    if unknown or not scopes:
        raise ConfigError(f"{where}: unknown or missing scopes {sorted(unknown)}; known: {sorted(SCOPES)}")
    return scopes


def scope_guard(ring: KeyRing) -> Callable[[ASGIConnection, BaseRouteHandler], None]:
    """The one guard of the app: a handler declares `opt={"scope": ...}`; handlers without one are open."""

    def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        scope = handler.opt.get("scope")
        if scope is None:
            return
        scopes = ring.scopes_for(connection.headers.get("authorization"))
        if scope not in scopes and "admin" not in scopes:
            raise PermissionDeniedException(f"this API key lacks the '{scope}' scope")

    return guard
