"""Errors of the service, each with the HTTP status it is answered with."""

from __future__ import annotations

__all__ = ["Conflict", "Forbidden", "NotFound", "ServiceError", "Unauthorized"]


class ServiceError(Exception):
    """A request the service refuses; ``status`` is its HTTP status, the message says why and what to do."""

    status = 400


class NotFound(ServiceError):
    """No such study (``name``)."""

    status = 404

    def __init__(self, message: str, *, name: str) -> None:
        super().__init__(message)
        self.name = name


class Forbidden(ServiceError):
    """The caller may not do this (another user's study)."""

    status = 403


class Unauthorized(ServiceError):
    """No valid token where one is needed, or an invalid one."""

    status = 401


class Conflict(ServiceError):
    """The study's state does not allow it (queued or running already; not running)."""

    status = 409
