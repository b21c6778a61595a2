"""The attribute names are one contract, written down once (storage/_keys.py) and documented."""

from __future__ import annotations

from pathlib import Path

from storage import StudyAttr, TrialAttr

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def names(cls: type) -> dict[str, str]:
    return {k: v for k, v in vars(cls).items() if k.isupper()}


def test_names_are_distinct_and_documented() -> None:
    doc = ARCHITECTURE.read_text(encoding="utf-8")
    for cls in (TrialAttr, StudyAttr):
        values = list(names(cls).values())
        assert len(set(values)) == len(values), cls
        missing = [v for v in values if f"`{v}`" not in doc]
        assert not missing, f"{cls.__name__} names not documented in docs/architecture.md: {missing}"
