"""The service's tables: the queue (one row per submitted study) and API tokens (hashes only)."""

from __future__ import annotations

import pytest
import sqlalchemy

import storage as st


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request, tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path}/q.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    eng = st.create_engine(url)
    st.ensure_queue_table(eng)
    st.ensure_queue_table(eng)  # a second server (or restart) finds it there
    yield eng
    eng.dispose()


def test_a_study_is_queued_once_until_it_finishes_then_can_be_queued_again(engine) -> None:
    first = st.queue_submit(engine, "a", priority=1, owner="ann")
    assert first is not None and first.state == "queued" and first.owner == "ann"
    assert st.queue_submit(engine, "a", priority=5, owner="bob") is None  # queued: unchanged
    assert st.queue_submit(engine, "b", priority=3, owner=None) is not None
    # highest priority first, then submission order
    assert [r.study_name for r in st.queue_rows(engine)] == ["b", "a"]
    assert st.queue_transition(engine, "a", "running", only_from=("queued",))
    assert not st.queue_transition(engine, "a", "running", only_from=("queued",))  # taken already
    assert st.queue_submit(engine, "a", priority=1, owner="bob") is None  # running: refused too
    assert st.queue_transition(engine, "a", "cancelled", only_from=st.ACTIVE_STATES, message="cancelled by ann")
    row = st.queue_row(engine, "a")
    assert row is not None and row.state == "cancelled" and row.message == "cancelled by ann"
    assert row.started_at is not None and row.finished_at is not None
    again = st.queue_submit(engine, "a", priority=2, owner="bob")
    assert again is not None and again.state == "queued" and again.priority == 2 and again.owner == "bob"
    assert again.seq > first.seq and again.message is None and again.started_at is None
    assert [r.study_name for r in st.queue_rows(engine, ("queued",))] == ["b", "a"]
    with pytest.raises(ValueError, match="unknown queue state 'paused'"):
        st.queue_transition(engine, "a", "paused", only_from=("queued",))


def test_a_token_is_stored_as_its_hash_only_and_names_its_user(engine) -> None:
    st.ensure_token_table(engine)
    assert not st.any_token(engine)
    secret = st.create_token(engine, "ann")
    admin = st.create_token(engine, "root", admin=True)
    assert secret != admin and secret.startswith("hps_") and len(secret) > 40
    assert st.any_token(engine)
    assert st.token_user(engine, secret) == st.TokenUser("ann", False)
    assert st.token_user(engine, admin) == st.TokenUser("root", True)
    assert st.token_user(engine, secret + "x") is None
    assert st.token_user(engine, "") is None
    with pytest.raises(st.TokenExists, match="a token named 'ann' exists already"):
        st.create_token(engine, "ann")
    with engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(sqlalchemy.text(f"SELECT * FROM {st.TOKEN_TABLE}"))]
    assert stored and not any(secret in str(c) or admin in str(c) for row in stored for c in row)
