"""Where artifacts (saved models, checkpoints) live: a directory or an S3 bucket, behind one contract.

An :class:`ArtifactLocation` is an Optuna artifact store (it has ``open_reader``, ``write`` and
``remove``, so :func:`optuna.artifacts.upload_artifact` and optuna-dashboard take it as one) with
the few things hpsearch needs besides: writing a file from its parts without joining them
(:meth:`~ArtifactLocation.write_parts`; :meth:`~ArtifactLocation.replace_parts` for a file rewritten
at every epoch), listing the files of an id (:meth:`~ArtifactLocation.list`)
and a probe that the store can be written (:meth:`~ArtifactLocation.probe`).

- :class:`DirectoryLocation`: :class:`optuna.artifacts.FileSystemArtifactStore`'s layout
  (``<directory>/<artifact id>``); a write goes to a temporary file renamed over the old one. A
  checkpoint's (:meth:`~DirectoryLocation.replace_parts`) goes into the file it replaced last time,
  kept as a spare: writing into pages the system holds already is several times cheaper than
  writing new ones and freeing the old.
- :class:`S3Location` (``s3://BUCKET[/PREFIX]``): :class:`optuna.artifacts.Boto3ArtifactStore`,
  each artifact at key ``PREFIX/<artifact id>``; a PUT replaces an object whole, so a write is
  atomic as well. The client is boto3's own: credentials, region and endpoint come from the usual
  AWS settings (``AWS_ACCESS_KEY_ID``, ``~/.aws``, an instance role; ``AWS_ENDPOINT_URL_S3`` for
  MinIO or another S3-compatible server), never from hpsearch's files or the database.

Every failure is an :class:`OSError` (a missing artifact: :class:`FileNotFoundError`), whatever the
store: the callers' retries and messages are the same for a full disk and an unreachable endpoint.
The location is a plain string (a path or the URI) so that it travels to the workers as one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

__all__ = ["ArtifactLocation", "DirectoryLocation", "S3Location", "artifact_of", "is_object_store", "open_location"]

S3_SCHEME = "s3://"
# boto3 uploads a stream of this size or more in parts (its multipart_threshold); less goes as one PUT
_ONE_PUT = 8 * 2**20
# a directory's own files beside an artifact's: .<id>.tmp-<pid>-<thread> (a write in flight, or a kill's
# leftover), .<id>.spare-<writer> (replace_parts' next file) and .<id>.prev-<writer> (on its way there)
_OWN_FILE = re.compile(r"^\.(?P<id>.+)\.(?:tmp-\d+-\d+|(?P<kept>spare|prev)-\d+-[0-9a-f]+)$")
_writer_tags: dict[int, str] = {}


def _writer_tag() -> str:
    """This process's name in its spare files: its pid and a random token (two hosts sharing a directory
    can run processes of the same pid; a forked child has a pid, so a token, of its own)."""
    pid = os.getpid()
    if pid not in _writer_tags:
        _writer_tags[pid] = f"{pid}-{uuid.uuid4().hex[:12]}"
    return _writer_tags[pid]


def artifact_of(name: str) -> str:
    """The artifact id a file of a store's listing belongs to: ``name`` itself, or the id a directory's
    temporary or spare file (``.<id>.tmp-...``, ``.<id>.spare-...``) is kept for."""
    m = _OWN_FILE.match(name)
    return m["id"] if m else name


def is_object_store(uri: str) -> bool:
    """Whether ``uri`` names an object store (``s3://...``) rather than a directory."""
    return uri.startswith(S3_SCHEME)


class ArtifactLocation(ABC):
    """An artifact store hpsearch writes models and checkpoints to.

    Attributes
    ----------
    uri
        The location as the user names it and the database records it: an absolute directory, or
        ``s3://BUCKET/PREFIX/``.
    """

    uri: str

    @abstractmethod
    def write_parts(self, artifact_id: str, parts: Sequence[bytes | memoryview]) -> None:
        """Store the concatenation of ``parts`` as ``artifact_id``, atomically: a reader sees the old file
        or the new one, whole, also after a kill in the middle of the write."""

    def replace_parts(self, artifact_id: str, parts: Sequence[bytes | memoryview]) -> None:
        """:meth:`write_parts` for a file that is replaced again and again (a checkpoint at every epoch);
        a store may keep something of the old version to make the next write cheaper."""
        self.write_parts(artifact_id, parts)

    def release(self, artifact_id: str, *, every_writer: bool = False) -> None:
        """Drop what :meth:`replace_parts` keeps for this process's next write of ``artifact_id`` (its
        writer is done), or (``every_writer``) what every process kept (a re-run of a trial starts
        writing: the runs before it were killed); nothing by default."""
        return

    @abstractmethod
    def read(self, artifact_id: str) -> bytes:
        """The bytes of ``artifact_id``. Raises :class:`FileNotFoundError` when there is none."""

    @abstractmethod
    def remove(self, artifact_id: str) -> None:
        """Delete ``artifact_id``; nothing happens when it is gone already."""

    @abstractmethod
    def list(self, prefix: str) -> dict[str, int]:
        """``{artifact id: size in bytes}`` of the files whose id starts with ``prefix`` (a directory's
        leftover temporaries of such a file, ``.<prefix>...``, included); empty when there is no store yet."""

    def where(self, artifact_id: str) -> str:
        """The file's place, for messages."""
        return f"{self.uri.rstrip('/')}/{artifact_id}"

    def probe(self) -> None:
        """Write and remove a small file: an :class:`OSError` says why this store cannot be written."""
        name = f".hpsearch-probe-{uuid.uuid4().hex}"
        self.write_parts(name, [b""])
        self.remove(name)

    # Optuna's ArtifactStore protocol (upload_artifact, optuna-dashboard)
    def open_reader(self, artifact_id: str) -> BinaryIO:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            return io.BytesIO(self.read(artifact_id))
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {artifact_id} in {self.uri}") from None

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.write_parts(artifact_id, [content_body.read()])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class DirectoryLocation(ArtifactLocation):
    """A directory (local, or shared by the nodes of a cluster: NFS, a mounted bucket)."""

    def __init__(self, path: str) -> None:
        self.uri = self.path = path

    def write_parts(self, artifact_id: str, parts: Sequence[bytes | memoryview]) -> None:
        # FileSystemArtifactStore's layout, written part by part rather than through its write(), which
        # would need the whole file as one more copy
        os.makedirs(self.path, exist_ok=True)
        tmp = os.path.join(self.path, f".{artifact_id}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as f:
                for p in parts:
                    f.write(p)
            os.replace(tmp, os.path.join(self.path, artifact_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def replace_parts(self, artifact_id: str, parts: Sequence[bytes | memoryview]) -> None:
        """:meth:`write_parts`, into the file this process replaced last time, in place.

        The version replaced is kept (a hard link, then a rename) as ``.<id>.spare-<pid>-<token>``, and this
        process's next write of ``artifact_id`` goes into it (one at a time, as a checkpoint's are).
        Its pages are in memory already, so the write costs no new pages, and the rename no freeing of
        the old file's (3.4 MB: 0.12 ms of CPU against 1.0 ms, docs/benchmarks.md).

        The file ``artifact_id`` is replaced by a rename, as in :meth:`write_parts`: a reader sees a
        whole version, also after a kill. (A reader that held the file open over two more writes would
        see the second's bytes; a checkpoint's checksum tells.) The spare takes as much disk as the
        file; :func:`artifact_of` names its owner, so deleting an artifact's files deletes it too.
        Without hard links (some network and FUSE file systems), each write is a new file, as in
        :meth:`write_parts`. Nothing is synced to the disk (as before): after a power cut or a kernel
        crash the file may hold a mix of versions, which a checkpoint's checksum refuses.
        """
        os.makedirs(self.path, exist_ok=True)
        final = self.where(artifact_id)
        spare, prev = self._spares(artifact_id)
        try:
            _write_into(spare, parts)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(prev)  # a kill's leftover
            try:
                os.link(final, prev)  # the version replaced stays, under the name of the next spare-to-be
                kept = True
            except OSError:  # the first version (FileNotFoundError), or no hard links on this file system
                kept = False
            os.replace(spare, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(spare)
            raise
        if kept:
            with contextlib.suppress(OSError):  # the file is written; the next write starts from a new spare
                os.replace(prev, spare)

    def release(self, artifact_id: str, *, every_writer: bool = False) -> None:
        # a writer still at work whose spare goes (a stale worker's) writes its next version to a new file
        paths = list(self._spares(artifact_id))
        if every_writer:
            paths += [os.path.join(self.path, n) for n in self.list(f"{artifact_id}.")
                      if (m := _OWN_FILE.match(n)) and m["kept"] and m["id"] == artifact_id]
        for path in paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _spares(self, artifact_id: str) -> tuple[str, str]:
        """:meth:`replace_parts`' next file for ``artifact_id`` and its name on the way there: this
        process's (not its thread's: a checkpoint's writes are each in a thread of their own)."""
        tag = _writer_tag()
        return (os.path.join(self.path, f".{artifact_id}.spare-{tag}"),
                os.path.join(self.path, f".{artifact_id}.prev-{tag}"))

    def read(self, artifact_id: str) -> bytes:
        from optuna.artifacts import FileSystemArtifactStore
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            with FileSystemArtifactStore(self.path).open_reader(artifact_id) as f:
                return f.read()
        except ArtifactNotFound:
            raise FileNotFoundError(errno.ENOENT, "No such file", self.where(artifact_id)) from None

    def remove(self, artifact_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.path, artifact_id))

    def list(self, prefix: str) -> dict[str, int]:
        try:
            names = os.listdir(self.path)
        except OSError:
            return {}
        out = {}
        for n in names:
            if n.startswith((prefix, f".{prefix}")):
                with contextlib.suppress(OSError):  # deleted in between
                    out[n] = os.path.getsize(os.path.join(self.path, n))
        return out

    def where(self, artifact_id: str) -> str:
        return os.path.join(self.path, artifact_id)


def _write_into(path: str, parts: Sequence[bytes | memoryview]) -> None:
    """Write the concatenation of ``parts`` to ``path``, into the file there, in place (:func:`_open_in_place`)."""
    fd = _open_in_place(path)
    try:
        at = 0
        for p in parts:
            view = memoryview(p).cast("B")
            while len(view):
                n = os.pwrite(fd, view, at)
                at += n
                view = view[n:]
        if os.fstat(fd).st_size != at:  # a longer old version's tail
            os.ftruncate(fd, at)
    finally:
        os.close(fd)


def _open_in_place(path: str) -> int:
    """A descriptor to write ``path`` with: the file there when this is its only name, else a new file."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_WRONLY)
        if os.fstat(fd).st_nlink == 1:
            return fd
        os.close(fd)
        os.unlink(path)  # reachable by another name too: never written in place
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


class S3Location(ArtifactLocation):
    """An S3 bucket, or a prefix in one (``s3://BUCKET/PREFIX/``), through boto3."""

    def __init__(self, uri: str, client: Any = None) -> None:
        bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
        self.uri, self.bucket = uri, bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self._client = client

    @property
    def client(self) -> Any:
        with _lock:  # a client is thread-safe once made; boto3's making of one is not
            if self._client is None:
                import boto3
                from botocore.config import Config

                # no retry settings here: AWS_MAX_ATTEMPTS / AWS_RETRY_MODE (or ~/.aws/config) decide
                self._client = boto3.session.Session().client(
                    "s3", config=Config(connect_timeout=10, read_timeout=60))
            return self._client

    def _store(self) -> Any:
        from optuna.artifacts import Boto3ArtifactStore

        # avoid_buf_copy: the parts are read as one stream, not copied into one more buffer first
        return Boto3ArtifactStore(self.bucket, client=self.client, avoid_buf_copy=True)

    def write_parts(self, artifact_id: str, parts: Sequence[bytes | memoryview]) -> None:
        key = self.prefix + artifact_id
        with _os_errors(self.where(artifact_id)):
            if sum(len(p) for p in parts) < _ONE_PUT:  # one PUT: no transfer manager and its threads to start
                self.client.put_object(Bucket=self.bucket, Key=key, Body=b"".join(parts))
            else:  # uploaded in parts, from the stream
                self._store().write(key, _Concat(parts))

    def read(self, artifact_id: str) -> bytes:
        from optuna.artifacts.exceptions import ArtifactNotFound

        where = self.where(artifact_id)
        with _os_errors(where):
            try:
                with contextlib.closing(self._store().open_reader(self.prefix + artifact_id)) as body:
                    return body.read()
            except ArtifactNotFound:
                raise FileNotFoundError(errno.ENOENT, "No such object", where) from None

    def remove(self, artifact_id: str) -> None:
        with _os_errors(self.where(artifact_id)):
            self._store().remove(self.prefix + artifact_id)  # S3's DELETE of a missing key succeeds

    def list(self, prefix: str) -> dict[str, int]:
        out = {}
        with _os_errors(self.where(prefix + "*")):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    out[obj["Key"][len(self.prefix):]] = int(obj["Size"])
        return out


class _Concat(io.RawIOBase):
    """A read-only stream over ``parts`` in turn, without joining them (boto3 uploads it in chunks)."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts if len(p)]
        self._i = self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        out = memoryview(buf).cast("B")
        n = 0
        while n < len(out) and self._i < len(self._parts):
            part = self._parts[self._i]
            k = min(len(out) - n, len(part) - self._at)
            out[n:n + k] = part[self._at:self._at + k]
            n += k
            self._at += k
            if self._at == len(part):
                self._i, self._at = self._i + 1, 0
        return n


@contextlib.contextmanager
def _os_errors(where: str) -> Iterator[None]:
    """botocore's errors as :class:`OSError` (``strerror``: the service's code and words), naming ``where``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise OSError(errno.EIO, f"{code}: {err.get('Message') or e}", where) from None
    except BotoCoreError as e:  # no endpoint, no credentials, a timeout
        raise OSError(errno.EIO, str(e), where) from None


_locations: dict[tuple[str, ...], ArtifactLocation] = {}
_lock = threading.RLock()


def open_location(uri: str) -> ArtifactLocation:
    """The :class:`ArtifactLocation` of ``uri``: ``s3://BUCKET[/PREFIX]``, else a directory path.

    An S3 location is made once per process and endpoint (its boto3 client is thread-safe, and
    slow to make).
    """
    if not is_object_store(uri):
        return DirectoryLocation(uri)
    key = (uri, os.environ.get("AWS_ENDPOINT_URL_S3", ""), os.environ.get("AWS_ENDPOINT_URL", ""))
    with _lock:
        loc = _locations.get(key)
        if loc is None:
            loc = _locations[key] = S3Location(uri)
        return loc
