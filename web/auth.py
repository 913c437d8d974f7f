"""Who is calling: HS256 bearer tokens, or open dev mode without a secret.

With `MATCHSTREAM_JWT_SECRET` set, every API route needs `Authorization: Bearer
<jwt>`; the token's `sub` is the user and `"role": "admin"` grants pool routes.
Without a secret every caller is an admin acting for whichever user it names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import jwt

from models.messages import is_identifier

__all__ = ["Authenticator", "Caller", "HttpError"]

log = logging.getLogger(__name__)

_MIN_SECRET_BYTES = 32  # an HS256 key shorter than the hash output weakens it
_LEEWAY_S = 10  # clock skew between the token issuer and the workers


class HttpError(Exception):
    """An answer other than success: becomes `{"detail": ...}` with `status`."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


@dataclass(frozen=True)
class Caller:
    """The authenticated party. `user_id` is None in open mode (no identity)."""

    user_id: str | None
    admin: bool

    def may_act_for(self, user_id: str) -> bool:
        return self.admin or self.user_id == user_id

    def require_admin(self) -> None:
        if not self.admin:
            raise HttpError(403, "this route needs a token with role=admin")

    def require_user(self, user_id: str) -> None:
        if not self.may_act_for(user_id):
            raise HttpError(403, "a user may act only on their own requests")


_OPEN = Caller(user_id=None, admin=True)


class Authenticator:
    """Checks bearer tokens against one shared HS256 secret.

    Example:
        >>> Authenticator(secret=None).authenticate(None).admin
        True
    """

    def __init__(self, *, secret: str | None) -> None:
        if secret is not None and len(secret.encode()) < _MIN_SECRET_BYTES:
            raise ValueError(
                f"MATCHSTREAM_JWT_SECRET must be at least {_MIN_SECRET_BYTES} bytes (RFC 7518)"
            )
        self._secret = secret

    @property
    def open_mode(self) -> bool:
        return self._secret is None

    def warn_if_open(self) -> None:
        if self.open_mode:
            log.warning(
                "auth=disabled MATCHSTREAM_JWT_SECRET is not set: the HTTP API accepts "
                "every caller as an admin. Set it before exposing this port."
            )

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller named by an `Authorization` header value.

        Raises:
            HttpError: 401 for a missing, malformed, expired or wrongly signed token.
        """
        if self._secret is None:
            return _OPEN
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        try:
            claims = jwt.decode(
                token.strip(),
                self._secret,
                algorithms=["HS256"],
                leeway=_LEEWAY_S,
                options={"require": ["sub"]},
            )
        except jwt.PyJWTError as error:
            raise HttpError(
                401,
                f"invalid token: {error}",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from None
        subject = claims.get("sub")
        # The subject becomes the user_id of messages, which allow no more: checked here,
        # a signed but odd `sub` would fail model validation later as a 500.
        if not isinstance(subject, str) or not is_identifier(subject):
            raise HttpError(
                401, "invalid token: sub must be 1 to 200 characters, no control characters"
            )
        return Caller(user_id=subject, admin=claims.get("role") == "admin")
