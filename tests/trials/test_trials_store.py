"""Artifact locations: a directory and an S3 bucket (a real S3 endpoint: moto's server) keep one contract."""

from __future__ import annotations

import errno
import os
import socket
import threading

import boto3
import optuna
import pytest
import torch

from trials import CheckpointPlan, checkpoint_files, checkpoint_sizes, open_location, remove_checkpoints
from trials._checkpoint import Checkpointer, CheckpointUnusable, read_checkpoint, write_checkpoint
from trials._store import DirectoryLocation, S3Location, _writer_tag, artifact_of


@pytest.fixture(params=["directory", "s3"])
def where(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "directory":
        return str(tmp_path / "arts")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/runs/a/"


def test_parts_written_read_listed_and_removed_alike(where: str) -> None:
    loc = open_location(where)
    assert loc.list("ck") == {}  # nothing yet (a directory not made yet included)
    loc.write_parts("ck-1", [b"head\n", memoryview(b"body"), b"", bytearray(b"!")])
    loc.write_parts("ck-1-folds-0", [b"x" * 70_000])
    loc.write_parts("other", [b"y"])
    assert loc.read("ck-1") == b"head\nbody!"
    assert loc.list("ck-1") == {"ck-1": 10, "ck-1-folds-0": 70_000}
    loc.write_parts("ck-1", [b"new"])  # replaced whole
    assert loc.read("ck-1") == b"new"
    loc.remove("ck-1")
    loc.remove("ck-1")  # gone already: nothing happens
    with pytest.raises(FileNotFoundError):
        loc.read("ck-1")
    assert sorted(loc.list("")) == ["ck-1-folds-0", "other"]


def test_a_replaced_file_reads_as_its_latest_version_on_both_stores(where: str) -> None:
    loc = open_location(where)
    for version in (b"one" * 1000, b"two!" * 2000, b"3"):  # longer, then much shorter: no old tail left
        loc.replace_parts("ck", [version[:5], memoryview(version[5:])])
        assert loc.read("ck") == version
    remove_checkpoints(where, "ck")
    assert loc.list("") == {} and checkpoint_files(where, "ck") == []  # its spare (a directory's) went too


def test_a_directory_writes_the_next_version_into_the_file_it_replaced(tmp_path) -> None:
    """The spare is the replaced version's own file, written in place: no new file per write."""
    loc = DirectoryLocation(str(tmp_path))
    spare = tmp_path / f".ck.spare-{_writer_tag()}"
    loc.replace_parts("ck", [b"v1"])
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # the first version: nothing replaced, no spare
    fd = os.open(tmp_path / "ck", os.O_RDONLY)  # held open: v1's file stays, its inode number not reused
    try:
        loc.replace_parts("ck", [b"v2"])
        assert os.path.samestat(spare.stat(), os.fstat(fd)) and spare.read_bytes() == b"v1"
        loc.replace_parts("ck", [b"v3!"])
        assert os.path.samestat((tmp_path / "ck").stat(), os.fstat(fd))  # v1's own file, rewritten
        assert os.pread(fd, 10, 0) == b"v3!"
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == [spare.name, "ck"] and spare.read_bytes() == b"v2"
    assert artifact_of(spare.name) == "ck" and artifact_of(f".ck.prev-{_writer_tag()}") == "ck"


def test_a_reruns_first_save_drops_the_spares_of_the_runs_before_it(tmp_path) -> None:
    """Killed runs of a trial (other processes) each left a spare; the re-run's first save removes them."""
    import uuid

    for pid in (11, 12):  # two killed runs' spares and one half-moved one, and another checkpoint's
        (tmp_path / f".ck.spare-{pid}-{uuid.uuid4().hex[:12]}").write_bytes(b"old" * 100)
    (tmp_path / f".ck.prev-13-{uuid.uuid4().hex[:12]}").write_bytes(b"old")
    theirs = tmp_path / f".ck-folds-1.spare-11-{uuid.uuid4().hex[:12]}"
    theirs.write_bytes(b"a fold part's")
    ck = Checkpointer(CheckpointPlan(str(tmp_path), "ck", every_epochs=1))
    for epoch in (1, 2):
        ck.save(epoch, "fp", lambda: {"w": torch.ones(3)})
    assert sorted(os.listdir(tmp_path)) == sorted(["ck", theirs.name, f".ck.spare-{_writer_tag()}"])
    ck.finish()
    assert sorted(os.listdir(tmp_path)) == sorted(["ck", theirs.name])


def test_a_spare_with_another_name_or_a_kills_leftovers_is_never_written_in_place(tmp_path) -> None:
    loc = DirectoryLocation(str(tmp_path))
    spare, prev = tmp_path / f".ck.spare-{_writer_tag()}", tmp_path / f".ck.prev-{_writer_tag()}"
    keep = tmp_path / "someone-elses"
    keep.write_bytes(b"theirs")
    os.link(keep, spare)  # the spare's file is reachable by another name too
    prev.write_bytes(b"a kill between link and rename left this")
    loc.replace_parts("ck", [b"v1"])
    loc.replace_parts("ck", [b"v2"])
    assert keep.read_bytes() == b"theirs" and (tmp_path / "ck").read_bytes() == b"v2"
    assert spare.read_bytes() == b"v1" and not prev.exists()


def test_a_failed_replace_leaves_the_last_version_whole(tmp_path, monkeypatch) -> None:
    loc = DirectoryLocation(str(tmp_path))
    loc.replace_parts("ck", [b"v1"])
    loc.replace_parts("ck", [b"v2"])

    def full(fd: int, data: object, at: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match="No space left"):
        loc.replace_parts("ck", [b"v3"])
    assert loc.read("ck") == b"v2" and os.listdir(tmp_path) == ["ck"]  # the half-written spare is gone


def test_an_s3_write_over_the_multipart_threshold_is_whole(s3_bucket: str) -> None:
    """boto3 uploads a stream over 8 MB in parts: the object is still the parts' concatenation, whole."""
    import numpy as np

    loc = open_location(f"s3://{s3_bucket}/big/")
    parts = [np.random.default_rng(0).bytes(9 << 20), memoryview(b"tail" * 1000)]
    loc.write_parts("ck", parts)
    assert loc.read("ck") == parts[0] + bytes(parts[1]) and loc.list("ck") == {"ck": (9 << 20) + 4000}


def test_an_s3_prefix_holds_its_own_files(s3_bucket: str) -> None:
    a, b = open_location(f"s3://{s3_bucket}/team/a/"), open_location(f"s3://{s3_bucket}/team/b/")
    a.write_parts("model", [b"a"])
    assert b.list("") == {} and a.list("") == {"model": 1}
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["team/a/model"]
    assert a.where("model") == f"s3://{s3_bucket}/team/a/model"
    whole = open_location(f"s3://{s3_bucket}/")  # the bucket's root
    assert whole.list("team/") == {"team/a/model": 1}


def test_s3_failures_are_os_errors_that_name_the_object(s3_bucket: str, monkeypatch) -> None:
    with pytest.raises(OSError) as e:
        open_location("s3://no-such-bucket-here/x/").write_parts("m", [b"1"])
    assert "NoSuchBucket" in e.value.strerror and e.value.filename == "s3://no-such-bucket-here/x/m"
    with pytest.raises(OSError, match="NoSuchBucket"):
        open_location("s3://no-such-bucket-here/x/").probe()
    with socket.socket() as s:  # a port nothing listens on: the endpoint is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    down = open_location(f"s3://{s3_bucket}/x/")
    for call in (lambda: down.read("m"), lambda: down.write_parts("m", [b"1"]), lambda: down.list("")):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EIO and "Could not connect to the endpoint" in e.value.strerror
    assert checkpoint_files(f"s3://{s3_bucket}/x/", "m") == []  # listing a store that is down: none found


def test_a_location_is_an_optuna_artifact_store(where: str, tmp_path) -> None:
    """upload_artifact / download_artifact (and so optuna-dashboard) take it as one."""
    from optuna.artifacts import download_artifact, upload_artifact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}")
    trial = study.ask()
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights")
    loc = open_location(where)
    artifact_id = upload_artifact(artifact_store=loc, file_path=str(src), study_or_trial=trial)
    assert loc.read(artifact_id) == b"weights"
    download_artifact(artifact_store=loc, artifact_id=artifact_id, file_path=str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == b"weights"
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        loc.open_reader("missing")


def test_a_checkpoint_round_trips_and_a_damaged_one_is_refused(where: str) -> None:
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "epoch_note": [1, "a"], "none": None}
    size = write_checkpoint(where, "ck", 4, "fp", state)
    epoch, back = read_checkpoint(where, "ck", "fp")
    assert epoch == 4 and torch.equal(back["w"], state["w"]) and back["epoch_note"] == [1, "a"]
    assert checkpoint_sizes(where, "ck") == {"ck": size}
    with pytest.raises(CheckpointUnusable, match="another stack"):
        read_checkpoint(where, "ck", "other-fp")
    loc = open_location(where)
    data = bytearray(loc.read("ck"))
    data[-1] ^= 0xFF
    loc.write_parts("ck", [data])
    with pytest.raises(CheckpointUnusable, match="checksum does not match"):
        read_checkpoint(where, "ck", "fp")
    assert remove_checkpoints(where, "ck") == size and checkpoint_files(where, "ck") == []
    with pytest.raises(CheckpointUnusable, match=f"no checkpoint at {loc.where('ck')}"):
        read_checkpoint(where, "ck", "fp")


@pytest.mark.parametrize("background", [False, True])
def test_a_checkpointer_saves_to_either_store_in_the_training_thread_or_its_own(where: str, background: bool,
                                                                                 monkeypatch) -> None:
    from trials import _checkpoint

    threads, real = [], _checkpoint.write_checkpoint

    def recorded(*args: object) -> int:
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(_checkpoint, "write_checkpoint", recorded)
    ck = Checkpointer(CheckpointPlan(where, "bg", every_epochs=1), background=background)
    ck.save(1, "fp", lambda: {"w": torch.ones(3)})
    ck.wait()
    ck.check()
    assert ck.saved == 1 and read_checkpoint(where, "bg", "fp")[0] == 1
    assert (threads == [threading.current_thread()]) is not background


def test_the_location_kind_follows_the_uri(tmp_path) -> None:
    assert isinstance(open_location(str(tmp_path)), DirectoryLocation)
    s3 = open_location("s3://bucket-x/a/b")
    assert isinstance(s3, S3Location) and (s3.bucket, s3.prefix) == ("bucket-x", "a/b/")
    assert open_location("s3://bucket-x/a/b") is s3  # one client per process and endpoint


def test_the_files_of_many_checkpoints_come_from_one_listing(where: str, monkeypatch) -> None:
    from trials import checkpoint_sizes_of
    from trials._store import ArtifactLocation

    loc = open_location(where)
    for name, n in [("checkpoint-a1", 1), ("checkpoint-a1-folds-0", 2), ("checkpoint-a2", 4), ("checkpoint-a10", 5),
                    ("model-x", 6)]:
        loc.write_parts(name, [b"x" * n])
    directory = where.startswith("/")
    if directory:  # a directory's leftover temporaries (an S3 write is one PUT: it leaves none)
        loc.write_parts(".checkpoint-a1.tmp-1-2", [b"x" * 3])
        loc.write_parts(".checkpoint-a2-folds-1.tmp-3-4", [b"x" * 7])
        loc.write_parts(".checkpoint-a1.spare-5-0a1b", [b"x" * 8])  # a killed writer's spare (replace_parts)
    calls = []
    real = type(loc).list

    def counted(self: ArtifactLocation, prefix: str) -> dict[str, int]:
        calls.append(prefix)
        return real(self, prefix)

    monkeypatch.setattr(type(loc), "list", counted)
    got = checkpoint_sizes_of(where, ["checkpoint-a1", "checkpoint-a2", "checkpoint-none"])
    assert calls == ["checkpoint-"]
    tmp = ({".checkpoint-a1.tmp-1-2": 3, ".checkpoint-a2-folds-1.tmp-3-4": 7, ".checkpoint-a1.spare-5-0a1b": 8}
           if directory else {})
    assert got["checkpoint-a1"] == {"checkpoint-a1": 1, "checkpoint-a1-folds-0": 2} | {
        k: v for k, v in tmp.items() if "-a1" in k}
    assert got["checkpoint-a2"] == {"checkpoint-a2": 4} | {k: v for k, v in tmp.items() if "-a2" in k}
    assert set(got) == {"checkpoint-a1", "checkpoint-a2"}  # not a10's, nor model-x's


def test_writes_that_wait_for_their_store_move_to_a_background_thread(tmp_path, monkeypatch) -> None:
    """A network store's round trips (here a sleep: waiting, not computing) would hold training up."""
    import time

    from trials import _checkpoint

    threads, real = [], _checkpoint.write_checkpoint

    def slow(*args: object) -> int:
        threads.append(threading.current_thread())
        time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(_checkpoint, "write_checkpoint", slow)
    ck = Checkpointer(CheckpointPlan(str(tmp_path), "slow", every_epochs=1))
    w = torch.ones(3)
    ck.save(1, "fp", lambda: {"w": w})
    assert not ck.background  # one write that waited: it may have been preempted
    ck.save(2, "fp", lambda: {"w": w})
    assert ck.background  # two in a row waited 50 ms each: the next ones go to a thread of their own
    ck.save(3, "fp", lambda: {"w": w})
    ck.finish()
    ck.check()
    here = threading.current_thread()
    assert threads[0] is here and threads[1] is here and threads[2] is not here
    assert read_checkpoint(str(tmp_path), "slow", "fp")[0] == 3 and ck.saved == 3


def test_a_write_that_waited_for_a_retry_does_not_move_writes_to_the_background(tmp_path, monkeypatch) -> None:
    """The backoff after a failed attempt is not the store's latency."""
    from trials import _checkpoint

    real, calls = _checkpoint.write_checkpoint, []

    def blinks(*args: object) -> int:  # every save's first attempt fails at once
        calls.append(1)
        if len(calls) % 2:
            raise OSError(errno.EIO, "blink")
        return real(*args)

    monkeypatch.setattr(_checkpoint, "write_checkpoint", blinks)
    monkeypatch.setattr(_checkpoint, "_WRITE_BACKOFF_S", 0.01)
    ck = Checkpointer(CheckpointPlan(str(tmp_path), "r", every_epochs=1))
    for epoch in (1, 2, 3):
        ck.save(epoch, "fp", lambda: {"w": torch.ones(3)})
    ck.check()
    assert ck.saved == 3 and not ck.background
