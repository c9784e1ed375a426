"""The head solver: a head-only rung on small data fits the softmax layer to convergence on
the cached pooled features by L-BFGS (multinomial logistic regression, a convex problem),
instead of stepping it by Adam."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from image_finetune.config import Rung, RungMode
from image_finetune.training.features import RowBatches

log = logging.getLogger(__name__)

SOLVER_MAX_IMAGES = 20_000
SOLVER_STRENGTHS = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strengths tried, chosen on validation


def uses_solver(rung: Rung, mode: RungMode, train_size: int) -> bool:
    """Whether a head rung is solved by L-BFGS rather than stepped by Adam."""
    if mode != "head" or rung.head_solver == "adam":
        return False
    return rung.head_solver == "lbfgs" or train_size <= SOLVER_MAX_IMAGES


def solve_head(
    cached: RowBatches,
    held_out: RowBatches,
    softmax: keras.Layer,
    epoch_log: Path,
    write_log: bool = True,
) -> dict:
    """Fit the head's softmax layer to convergence on the cached pooled features (and their
    mirrored copies): multinomial logistic regression by L-BFGS, a convex problem that small
    data solves in seconds, its L2 strength chosen on validation. Writes the epoch log's one
    row to ``epoch_log``; returns the history as fit would."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    x = np.concatenate(
        [np.asarray(cached.rows)]
        + ([np.asarray(cached.mirrored)] if cached.mirrored is not None else [])
    )
    y = np.tile(np.asarray(cached.labels), len(x) // len(cached.labels))
    x_val, y_val = np.asarray(held_out.rows), np.asarray(held_out.labels)
    fits = [LogisticRegression(C=c, max_iter=2000).fit(x, y) for c in SOLVER_STRENGTHS]
    best = max(fits, key=lambda fit: fit.score(x_val, y_val))
    n_classes = held_out.n_classes
    kernel = np.zeros((x.shape[1], n_classes), "float32")
    bias = np.zeros(n_classes, "float32")
    if n_classes == 2:  # scikit-learn keeps one row for two classes: class 1 against 0
        kernel[:, 1], bias[1] = best.coef_[0], best.intercept_[0]
    else:
        kernel[:, best.classes_], bias[best.classes_] = best.coef_.T, best.intercept_
    softmax.set_weights([kernel, bias])
    history = {
        "accuracy": [best.score(x, y)],
        "loss": [log_loss(y, best.predict_proba(x))],
        "val_accuracy": [best.score(x_val, y_val)],
        "val_loss": [log_loss(y_val, best.predict_proba(x_val), labels=best.classes_)],
    }
    if write_log:
        epoch_log.parent.mkdir(parents=True, exist_ok=True)
        epoch_log.write_text(
            "epoch,"
            + ",".join(history)
            + "\n0,"
            + ",".join(f"{v[0]:.6g}" for v in history.values())
            + "\n"
        )
    log.info(
        "head solved by L-BFGS (C=%g, chosen on validation): train %.4f, validation %.4f",
        best.C,
        history["accuracy"][0],
        history["val_accuracy"][0],
    )
    return history
