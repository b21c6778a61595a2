"""Creating hpsearch's own tables (leases, queue, tokens, notify) beside Optuna's."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

__all__ = ["create_table"]


def create_table(engine: Engine, table: Table) -> None:
    """Create ``table`` if it is missing; safe when several processes race (a ``CREATE TABLE`` that
    fails because another process created it between the check and the statement is not an error)."""
    try:
        table.metadata.create_all(engine, tables=[table], checkfirst=True)
    except (ProgrammingError, IntegrityError, OperationalError):
        if not sqlalchemy.inspect(engine).has_table(table.name):
            raise
