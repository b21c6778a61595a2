"""The data factory of examples/patients.yaml: grouped data, several visits per patient.

``hpsearch`` calls ``visits()`` once, on the driver (``data.source: python``, ``data.factory:
examples.patients:visits``), and splits what it returns. The third array names each row's patient
(``cv.groups: groups``), so that no patient's visits sit in two folds, nor on both sides of the
test split: a model scored on visits of patients it trained on would be scored on patients it
has, in part, memorized.

Made up, and small enough to need no download: 80 patients with 4 to 12 visits each. A visit has 12
measurements: the patient's own baseline (fixed per patient, unrelated to the diagnosis) plus
noise, and three of them shift with the diagnosis.
"""

from __future__ import annotations

import numpy as np


def visits(n_patients: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, y, groups)``: features ``[n_visits, 12]``, the patient's diagnosis, the patient id."""
    rng = np.random.default_rng(seed)
    n_visits = rng.integers(4, 13, n_patients)
    patient = np.repeat(np.arange(n_patients), n_visits)
    diagnosis = rng.integers(0, 2, n_patients)
    baseline = rng.normal(0.0, 1.0, size=(n_patients, 12))
    X = baseline[patient] + rng.normal(0.0, 1.0, size=(len(patient), 12))
    X[:, :3] += 1.0 * diagnosis[patient, None]
    return X.astype(np.float32), diagnosis[patient], np.array([f"patient-{p:03d}" for p in patient])
