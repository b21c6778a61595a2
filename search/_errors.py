"""Errors of the search package that need no heavy imports (the CLI maps them to exit codes)."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A request that cannot be carried out as asked; the message says what to do instead."""
