"""Exception classes of the storage package.

Every message an exception of this module carries is meant for the user and must never contain a
password: URLs are always passed through :func:`storage._url.redact` first.
"""

from __future__ import annotations


class StorageError(Exception):
    """A problem with the study storage, with a message that says how to fix it."""


class BadStorageURL(StorageError, ValueError):
    """The storage URL itself is wrong (malformed, unsupported database or driver): bad input, not an
    unreachable or broken database."""


class StorageUnavailable(StorageError):
    """The database stayed unreachable for longer than the retry budget."""


class StudyNotFound(StorageError):
    """No study with the requested name exists in the storage.

    Attributes
    ----------
    study_name : str
        The name that was looked up.
    existing : list[str]
        Names of the studies that do exist (all of them, in creation order).
    """

    def __init__(self, message: str, *, study_name: str, existing: list[str]) -> None:
        super().__init__(message)
        self.study_name = study_name
        self.existing = existing


class LeaseHeld(StorageError):
    """Another live orchestrator holds the study's lease.

    Attributes
    ----------
    holder : storage._lease.LeaseInfo
        The current holder of the lease.
    """

    def __init__(self, message: str, *, holder: object) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(StorageError):
    """Our lease was taken over by another orchestrator (or removed) while we held it."""
