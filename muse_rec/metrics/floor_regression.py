"""The model-free floors' logistic regression: the other floors' scores (`lr_features`) fitted on (a subsample
of) train by Newton's method (`fit_logistic`, which says why not a library's). `muse_rec.metrics.floors` scores
the floors and fits it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from muse_rec.metrics.floor_scores import CATEGORY_FLOOR, NO_CATEGORY_SCORE, SCL_FLOORS
from muse_rec.metrics.kernels import DEFAULT_LOGLOSS_EPS

__all__ = ["LogisticModel", "fit_logistic", "lr_features"]


def lr_features(scores: Dict[str, np.ndarray]) -> np.ndarray:
    """``[n, F]`` float64: logit of the smoothed CTR, the category share (0 where missing) and its
    "missing" indicator, the SCL floors (0 where missing) and one "some cosine missing" indicator, so a
    missing value is not read as a real share of -1 or a real cosine of -1.1."""
    p = np.clip(scores["popularity"], DEFAULT_LOGLOSS_EPS, 1 - DEFAULT_LOGLOSS_EPS)
    cols = [np.log(p / (1 - p))]
    if CATEGORY_FLOOR in scores:
        gone = scores[CATEGORY_FLOOR] <= NO_CATEGORY_SCORE
        cols += [np.where(gone, 0.0, scores[CATEGORY_FLOOR]), gone.astype(np.float64)]
    names = [k for k in SCL_FLOORS if k in scores]
    missing = np.zeros(p.shape, bool)
    for k in names:
        gone = scores[k] < -1.0
        missing |= gone
        cols.append(np.where(gone, 0.0, scores[k]))
    if names:
        cols.append(missing.astype(np.float64))
    return np.stack(cols, axis=1)


@dataclass
class LogisticModel:
    """``p = sigmoid(((x - mean) / scale) . w + b)``."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    iterations: int

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 50, tol: float = 1e-10) -> LogisticModel:
    """Newton's method on ``mean logloss + l2/2 |w|^2`` over standardised ``x [n, F]``, ``y [n]``.

    Why Newton and not SGD/LBFGS: with F <= 7 features the Hessian is tiny, the objective is
    strictly convex, and Newton converges to the exact optimum in ~10 deterministic steps with
    no learning rate to tune (a floor must not depend on tuning).
    """
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant column becomes 0; the L2 keeps H regular
    z = np.concatenate([(x - mean) / scale, np.ones((x.shape[0], 1))], axis=1)
    theta = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # the bias is not penalised
    it = 0
    for it in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(z @ theta)))
        grad = z.T @ (p - y) / y.size + reg * theta
        hess = (z * (p * (1 - p))[:, None]).T @ z / y.size + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return LogisticModel(mean, scale, theta[:-1], float(theta[-1]), it)
