"""Bearer tokens: HS256 JWTs with ``sub`` (user id) and ``role`` (customer | admin)."""

from __future__ import annotations

from datetime import timedelta

import jwt

from orderly.services.ports import Clock, InvalidToken

ROLES = ("customer", "admin")


# Tokens whose signature was checked, and the claims read from them. A client sends the same
# token with every request until it expires; checking its signature again cost pyjwt ~20-30 us
# per request (base64 alphabet checks, key preparation, two JSON parses). Bounded; the oldest
# entry goes first.
VERIFIED_TOKENS_KEPT = 4096


class JwtTokens:
    def __init__(self, secret: str, issuer: str, ttl: timedelta, clock: Clock) -> None:
        self._secret = secret
        self._issuer = issuer
        self._ttl = ttl
        self._clock = clock
        self._verified: dict[str, tuple[object, object, object]] = {}

    def issue(self, user_id: str, role: str) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        now = self._clock.now()
        claims = {
            "sub": user_id,
            "role": role,
            "iss": self._issuer,
            "iat": int(now.timestamp()),
            "exp": int((now + self._ttl).timestamp()),
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str) -> tuple[str, str]:
        """The token's (user id, role). Its signature and issuer are checked once per token
        (the outcome depends on nothing else); expiry and claims on every call."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._verified) >= VERIFIED_TOKENS_KEPT:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = claims
        sub, role, expires = claims
        now = self._clock.now().timestamp()
        if not isinstance(expires, int | float) or now >= expires:
            raise InvalidToken("Signature has expired")
        if not isinstance(sub, str) or not sub or role not in ROLES:
            raise InvalidToken("token has a bad subject or role")
        return sub, str(role)

    def _decode(self, token: str) -> tuple[object, object, object]:
        try:
            # Times are checked against the injected clock in verify(), as issue() uses it.
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=self._issuer,
                options={
                    "require": ["sub", "exp", "role"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        return claims["sub"], claims["role"], claims["exp"]
