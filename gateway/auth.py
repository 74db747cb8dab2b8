"""Passwords, signed tokens and session cookies.

- Passwords are stored as scrypt hashes (``cti-gateway hash-password``); checking
  one costs tens of milliseconds on purpose, so callers run it off the loop.
- Tokens and session cookies are signed with HMAC-SHA256 under the gateway's
  secret, carry their purpose, subject and expiry, and are compared in constant
  time. A token names one agent and opens his websockets until it expires (an
  embedded page reconnects with the same one); a session cookie names
  a user for the HTTP API. Logging out revokes the session id in memory (and the
  browser drops the cookie); the signing secret outlives restarts, so sessions do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


class TokenError(Exception):
    """A token or cookie that is malformed, forged, expired or revoked; the message says which."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=128 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def is_password_hash(value: str) -> bool:
    parts = value.split("$")
    return len(parts) == 6 and parts[0] == "scrypt" and all(parts[1:])


@dataclass(frozen=True)
class Claims:
    purpose: str  # "ws" (websocket token) or "session"
    subject: str  # the user's login
    expires_at: float
    token_id: str


class Signer:
    """Signs and checks ``purpose.subject.expiry`` claims; clock injected for tests."""

    def __init__(self, secret: bytes, clock: Callable[[], float]) -> None:
        if len(secret) < 16:
            raise ValueError("the signing secret must be at least 16 bytes")
        self._key = hashlib.sha256(b"cti-gateway/v1/" + secret).digest()
        self._clock = clock
        self._revoked: dict[str, float] = {}  # token id -> expiry (pruned once expired)

    def issue(self, purpose: str, subject: str, ttl: float) -> tuple[str, Claims]:
        claims = Claims(purpose, subject, self._clock() + ttl, secrets.token_urlsafe(12))
        body = _b64(json.dumps({"p": claims.purpose, "s": claims.subject, "e": round(claims.expires_at, 3),
                                "i": claims.token_id}, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", claims

    def check(self, token: str, purpose: str) -> Claims:
        body, dot, signature = token.partition(".")
        # Bytes, not str: compare_digest refuses non-ASCII str, and a token is untrusted input.
        if not dot or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise TokenError("bad signature")
        try:
            raw = json.loads(_unb64(body))
            claims = Claims(str(raw["p"]), str(raw["s"]), float(raw["e"]), str(raw["i"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed token") from exc
        if claims.purpose != purpose:
            raise TokenError(f"not a {purpose} token")
        if claims.expires_at <= self._clock():
            raise TokenError("token expired")
        if claims.token_id in self._revoked:
            raise TokenError("token revoked")
        return claims

    def revoke(self, claims: Claims) -> None:
        now = self._clock()
        self._revoked = {tid: exp for tid, exp in self._revoked.items() if exp > now}
        self._revoked[claims.token_id] = claims.expires_at

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
