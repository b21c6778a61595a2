"""The server's studies notify too, from the notify section it keeps in its own table."""

from __future__ import annotations

import json

import pytest

import storage as st
from search._notify import flush_notifications
from tests.search.resume_checks import fake_spec
from tests.search.service.conftest import wait_until
from tests.search.webhook import SECRET

pytestmark = pytest.mark.usefixtures("fast_notify")

def test_the_server_notifies_after_a_restart_too(sqlite_url: str, hook, make_server) -> None:
    text = json.dumps(fake_spec("grid", "sv", notify={"webhook": hook.url}, training={"max_epochs": 6}))
    first = make_server(sqlite_url, slots=2)
    first.submit(text)
    first.start()
    wait_until(lambda: st.list_studies(first.engine)[0].n_trials["COMPLETE"] >= 1, 30, "a complete trial")
    first.close()  # a shutdown is no failure: nothing is posted
    assert flush_notifications(30) and hook.events() == []
    second = make_server(sqlite_url, slots=2).start()  # reads the notify section from its table
    assert second.wait_idle(60)
    assert flush_notifications(30)
    assert hook.events() == ["finished"] and hook.bodies[0]["done"] == 6
    assert SECRET not in json.dumps(st.study_attrs(second.engine, "sv"))
