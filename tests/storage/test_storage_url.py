from __future__ import annotations

import pytest

from storage import DEFAULT_URL, StorageError, redact, resolve_url, scrub


def test_resolve_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///hpsearch.db"
    monkeypatch.setenv("HPSEARCH_STORAGE", "sqlite:///from_env.db")
    assert resolve_url(None) == "sqlite:///from_env.db"
    assert resolve_url("") == "sqlite:///from_env.db"
    assert resolve_url("sqlite:///flag.db") == "sqlite:///flag.db"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_urls_use_psycopg(scheme: str) -> None:
    assert (
        resolve_url(f"{scheme}://u:pw@db.example:5433/hp") == "postgresql+psycopg://u:pw@db.example:5433/hp"
    )


def test_redact_hides_passwords() -> None:
    assert redact("postgresql+psycopg://u:s3cret@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert "s3cret" not in redact("postgresql://u:pw@h/db?password=s3cret")
    assert "s3cret" not in redact("postgresql://u:s3c@ret@h/db")  # malformed: unescaped @
    assert redact("sqlite:///x.db") == "sqlite:///x.db"
    assert scrub("auth failed for s3cret", "postgresql://u:s3cret@h/db") == "auth failed for ***"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "malformed storage URL"),
        ("mysql://u:s3cret@h/db", "database type 'mysql' is not supported"),
        ("postgresql+psycopg2://u:s3cret@h/db", "driver 'psycopg2' is not supported"),
        ("postgresql://u:s3c@ret@h/db", "percent-encode"),
        ("postgresql://u:s3cret@h", "names no database"),
    ],
)
def test_bad_urls(url: str, needle: str) -> None:
    with pytest.raises(StorageError) as info:
        resolve_url(url)
    msg = str(info.value)
    assert needle in msg
    assert "sqlite:///" in msg and "postgresql://user@host:5432/db" in msg
    assert "s3cret" not in msg and "ret@" not in msg
