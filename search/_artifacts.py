"""Where the best model is saved: an Optuna artifact store, and the model file's format.

The store (:mod:`trials._store`) is a directory (:class:`optuna.artifacts.FileSystemArtifactStore`'s
layout) or an S3 bucket (:class:`optuna.artifacts.Boto3ArtifactStore`): ``--artifacts DIR`` (or
``file://DIR``, or ``s3://BUCKET[/PREFIX]``), else ``$HPSEARCH_ARTIFACTS``, else, for a SQLite storage,
``<db file>.artifacts/`` beside the database. A PostgreSQL storage has no file to stand beside: without
``--artifacts`` the model is not saved, and the run says what to pass. Only the orchestrator writes the store's records
in the database (the artifact's id as a trial system attribute, as
:func:`optuna.artifacts.upload_artifact` writes it, so that optuna-dashboard lists it); workers send
the trained weights back through Ray.

A model file is a zip archive (no pickle: it is read without running code) of ``hpsearch-model.json``
(the spec, params, input shape, class labels, feature scaling, the test result) and
``state_dict.pt`` (``torch.save`` of the network's ``state_dict``, read with ``weights_only=True``).
This module needs neither torch nor the data: the driver writes the archive from bytes.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import time
import zipfile
from dataclasses import dataclass
from typing import Any

from storage import StorageError
from trials import is_object_store, open_location

from ._errors import UsageError

__all__ = [
    "MODEL_FORMAT",
    "ArtifactStoreError",
    "ModelStore",
    "check_writable",
    "checkpoint_needs_dir",
    "not_saved_hint",
    "pack_model",
    "read_artifact",
    "resolve_artifacts",
    "unpack_model",
]

MODEL_FORMAT = "hpsearch-model/1"
_META = "hpsearch-model.json"
_WEIGHTS = "state_dict.pt"
ENV = "HPSEARCH_ARTIFACTS"
# how often a failed write to the store is tried in all (a network file system or an endpoint that blinks)
_WRITE_ATTEMPTS = 3
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class ArtifactStoreError(StorageError):
    """The artifact store could not be written or read (exit 3: a storage problem, not bad input)."""


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (None for an in-memory one or another database)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    path = path.split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def resolve_artifacts(url: str, artifacts: str | None = None) -> str | None:
    """The artifact store of a run on storage ``url``: ``artifacts``, ``$HPSEARCH_ARTIFACTS``, or
    ``<sqlite file>.artifacts``; None for a storage without a file (PostgreSQL) and nothing given.
    A directory comes back absolute, an S3 location as ``s3://BUCKET/PREFIX/`` (or ``s3://BUCKET/``).

    Raises
    ------
    UsageError
        For another URI scheme, an S3 URI without a bucket, or ``s3://`` without boto3 installed.
    """
    given = artifacts if artifacts is not None else os.environ.get(ENV) or None
    if given is None:
        db = _sqlite_file(url)
        return None if db is None else os.path.abspath(db) + ".artifacts"
    if is_object_store(given):
        return _s3_uri(given)
    if given.startswith("file://"):
        given = given[len("file://"):]
    elif "://" in given:
        raise UsageError(f"--artifacts {given!r}: unsupported scheme; pass a directory (a path or file://PATH) or "
                         "an S3 bucket (s3://BUCKET[/PREFIX]); for a cluster, a directory every node and the "
                         "driver share, or a bucket")
    if not given:
        raise UsageError("--artifacts: empty path; pass a directory (a path or file://PATH) or s3://BUCKET[/PREFIX]")
    return os.path.abspath(os.path.expanduser(given))


def _s3_uri(given: str) -> str:
    """``s3://BUCKET/PREFIX/`` of an ``s3://`` URI, checked: a bucket name S3 accepts, and boto3 installed."""
    bucket, _, prefix = given[len("s3://"):].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise UsageError(f"--artifacts {given!r}: {bucket!r} is not an S3 bucket name (3 to 63 lowercase letters, "
                         "digits, dots and hyphens); pass s3://BUCKET or s3://BUCKET/PREFIX")
    if importlib.util.find_spec("boto3") is None:
        raise UsageError(f"--artifacts {given!r}: an S3 artifact store needs boto3, which is not installed; "
                         "pip install 'hpsearch[s3]' (on the driver and every worker)")
    prefix = "/".join(p for p in prefix.split("/") if p)
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}"


def not_saved_hint(url: str) -> str:
    """What to pass to save the model when :func:`resolve_artifacts` found no store."""
    return ("the best model is not saved: the storage is not a SQLite file, so there is no directory beside it "
            f"for the model; pass --artifacts DIR (or set ${ENV}) to save it there (on a cluster: a "
            "directory the driver can write and its readers can read, or s3://BUCKET/PREFIX)")


def checkpoint_needs_dir(url: str) -> str:
    """Why checkpoints cannot be saved when :func:`resolve_artifacts` found no store, and what to pass."""
    return ("checkpoints are saved to the artifact directory, and the storage is not a SQLite file with a "
            f"directory beside it; pass --artifacts DIR (or set ${ENV}) with a directory every worker can write "
            "(on a cluster: a shared one, or s3://BUCKET/PREFIX), or remove the checkpoint section")


def check_writable(path: str, what: str = "the best model is") -> None:
    """Write (then remove) a probe file in the artifact store ``path`` (a directory is created if
    needed); ``what`` says what is saved there.

    Raises
    ------
    UsageError
        Naming the store, the reason and the fix (the CLI exits 2, before any trial runs).
    """
    try:
        open_location(path).probe()
    except OSError as e:
        if is_object_store(path):
            raise UsageError(f"the artifact store {path!r} cannot be written ({e.strerror or e}); {what} saved "
                             "there. Check that the bucket exists and that this user's AWS credentials may write "
                             "it (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws; AWS_ENDPOINT_URL_S3 for an "
                             f"S3-compatible server), or pass --artifacts (or set ${ENV}) with another store") from None
        raise UsageError(f"the artifact directory {path!r} is not writable ({e.strerror or e}); {what} "
                         f"saved there. Fix its permissions, or pass --artifacts DIR (or set ${ENV}) with a "
                         "directory this user can write") from None


def pack_model(meta: dict[str, Any], state_dict: bytes) -> bytes:
    """The model file: a zip of ``hpsearch-model.json`` (``meta`` + the format) and ``state_dict.pt``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(_META, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1))
        z.writestr(_WEIGHTS, state_dict)
    return buf.getvalue()


def unpack_model(data: bytes, source: str) -> tuple[dict[str, Any], bytes]:
    """``(meta, state_dict bytes)`` of a model file; ``source`` names it in errors.

    Raises
    ------
    UsageError
        When ``data`` is not an hpsearch model file (or one of a format this version cannot read).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            meta = json.loads(z.read(_META))
            weights = z.read(_WEIGHTS)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{source} is not an hpsearch model file ({type(e).__name__}: {e}); write one with "
                         "`hpsearch export-model NAME --out FILE`") from None
    if meta.get("format") != MODEL_FORMAT:
        raise UsageError(f"{source} is a model file of format {meta.get('format')!r}; this hpsearch reads "
                         f"{MODEL_FORMAT!r}")
    return meta, weights


@dataclass
class ModelStore:
    """The artifact directory of one run, with what the saved model needs besides its weights.

    Parameters
    ----------
    path
        The artifact store: a directory or ``s3://BUCKET/PREFIX/`` (checked writable at start:
        :func:`check_writable`).
    model_info
        Facts about the model that the orchestrator does not know (from the data set):
        ``n_features``, ``n_classes``, ``classes``, ``input_shape``.
    """

    path: str
    model_info: dict[str, Any]

    def write(self, artifact_id: str, data: bytes) -> None:
        """Write ``data`` as artifact ``artifact_id`` (:func:`trials.open_location`), trying again on
        ``OSError`` (a network file system or an endpoint that blinks).

        Raises
        ------
        ArtifactStoreError
            When every attempt failed.
        """
        loc = open_location(self.path)
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                loc.write_parts(artifact_id, [data])
                return
            except OSError as e:
                if attempt == _WRITE_ATTEMPTS:
                    raise ArtifactStoreError(
                        f"cannot write the best model to the artifact store {self.path!r} "
                        f"({e.strerror or e}) after {attempt} attempts") from None
                time.sleep(0.2 * attempt)


def read_artifact(path: str, artifact_id: str) -> bytes:
    """The bytes of artifact ``artifact_id`` in the artifact store ``path``.

    Raises
    ------
    UsageError
        When the store holds no such artifact (another store was given, or it was deleted).
    """
    try:
        return open_location(path).read(artifact_id)
    except FileNotFoundError:
        raise UsageError(f"the model artifact {artifact_id} is not in the artifact store {path!r}; pass the "
                         f"store the study saved it to with --artifacts DIR|s3://BUCKET/PREFIX (or ${ENV})") from None
    except OSError as e:
        raise ArtifactStoreError(f"cannot read the model artifact {artifact_id} in {path!r}: "
                                 f"{e.strerror or e}") from None
