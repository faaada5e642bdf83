"""Bearer tokens: HS256 JWTs with ``sub`` (user id) and ``role`` (customer | admin)."""

from __future__ import annotations

from datetime import timedelta

import jwt

from orderly.services.ports import Clock, InvalidToken

ROLES = ("customer", "admin")


class JwtTokens:
    def __init__(self, secret: str, issuer: str, ttl: timedelta, clock: Clock) -> None:
        self._secret = secret
        self._issuer = issuer
        self._ttl = ttl
        self._clock = clock

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
        try:
            # Times are checked against the injected clock below, as issue() uses it.
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
        now = self._clock.now().timestamp()
        expires = claims["exp"]
        if not isinstance(expires, int | float) or now >= expires:
            raise InvalidToken("Signature has expired")
        sub, role = claims["sub"], claims["role"]
        if not isinstance(sub, str) or not sub or role not in ROLES:
            raise InvalidToken("token has a bad subject or role")
        return sub, role
