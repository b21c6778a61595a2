"""API tokens of ``hpsearch serve``: table ``hpsearch_tokens`` holds each token's name and hash only.

A token is 32 random bytes (URL-safe text, prefixed ``hps_``); it is shown once, when created, and
only its SHA-256 is stored. A high-entropy secret needs no slow hash: the digest cannot be turned
back into the token, and a lookup by digest compares no secret byte by byte.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from storage._tables import create_table

__all__ = ["TOKEN_TABLE", "TokenExists", "TokenUser", "any_token", "create_token", "ensure_token_table",
           "token_user"]

TOKEN_TABLE = "hpsearch_tokens"
_PREFIX = "hps_"

_metadata = MetaData()
_tokens = Table(
    TOKEN_TABLE,
    _metadata,
    Column("name", String(255), primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("admin", Boolean, nullable=False),
    Column("created_at", DateTime, nullable=False),  # naive UTC
)


class TokenExists(ValueError):
    """A token of that name exists already (``name``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"a token named {name!r} exists already; choose another name")
        self.name = name


@dataclass(frozen=True)
class TokenUser:
    """Whom a valid token names."""

    name: str
    admin: bool


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def ensure_token_table(engine: Engine) -> None:
    """Create ``hpsearch_tokens`` if it is missing (safe when several processes race)."""
    create_table(engine, _tokens)


def create_token(engine: Engine, name: str, *, admin: bool = False) -> str:
    """Create token ``name`` and return it: the only time it is ever seen (its hash is stored).

    Raises :class:`TokenExists` if ``name`` is taken.
    """
    if not name or not name.isprintable() or len(name) > 255:
        raise ValueError(f"token name {name!r}: give 1 to 255 printable characters")
    ensure_token_table(engine)
    token = _PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(_tokens.insert().values(name=name, token_sha256=_digest(token), admin=admin,
                                                 created_at=datetime.now(timezone.utc).replace(tzinfo=None)))
    except IntegrityError:
        raise TokenExists(name) from None
    return token


def token_user(engine: Engine, token: str) -> TokenUser | None:
    """The user of ``token``, or None if it is not a valid token."""
    with engine.connect() as conn:
        r = conn.execute(select(_tokens.c.name, _tokens.c.admin)
                         .where(_tokens.c.token_sha256 == _digest(token))).first()
    return TokenUser(r.name, bool(r.admin)) if r is not None else None


def any_token(engine: Engine) -> bool:
    """Whether at least one token exists."""
    with engine.connect() as conn:
        return conn.execute(select(_tokens.c.name).limit(1)).first() is not None
