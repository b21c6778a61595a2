"""Seeds: one per trial, and per member (fold) of a trial."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MemberSeeds", "member_seeds", "trial_seed"]

ROLE_CV = 0
ROLE_REFIT = 1


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Seed of trial ``trial_number`` of a study, derived with ``numpy.random.SeedSequence``.

    Parameters
    ----------
    study_seed, trial_number
        Non-negative integers.

    Returns
    -------
    int
        A seed in ``[0, 2**31)``; different trials get statistically independent seeds.
    """
    state = np.random.SeedSequence([int(study_seed), int(trial_number)]).generate_state(1, dtype=np.uint32)
    return int(state[0]) & 0x7FFFFFFF


@dataclass(frozen=True)
class MemberSeeds:
    """Independent seeds of one member: weight init, data order, dropout masks."""

    init: int
    order: int
    dropout: int


def member_seeds(seed: int, fold: int, role: int = ROLE_CV) -> MemberSeeds:
    """Seeds of the member training ``fold`` in a trial seeded ``seed``.

    They depend only on ``(seed, role, fold)``, so a member's training does not change when other
    members are added to or removed from its stack.
    """
    a, b, c = np.random.SeedSequence([int(seed), int(role), int(fold)]).generate_state(3, dtype=np.uint64)
    return MemberSeeds(int(a) & 0x7FFFFFFFFFFFFFFF, int(b) & 0x7FFFFFFFFFFFFFFF, int(c) & 0x7FFFFFFFFFFFFFFF)
