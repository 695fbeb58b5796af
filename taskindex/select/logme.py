"""LogME (You et al., ICML 2021): how well a pre-trained model should transfer, from its frozen features alone.

Expert selection by task distance (TaskIndex.select_model) has to beat the cheap
alternative of scoring every candidate model on the target task directly. LogME is that baseline in the
expert-selection benchmark: one forward pass and one SVD per model, no fine-tuning.
"""

from __future__ import annotations

import numpy as np

from taskindex.errors import TaskIndexError

MAX_ITER = 100  # the paper stops after 11 at most, which can leave a flat evidence ~1e-3 below its maximum
RTOL = 1e-5


def _check(features, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated (float64 features N x D, class index 0..K-1 per sample)."""
    try:
        f = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError):
        raise TaskIndexError(f"features must be a numeric array (samples x dims); got {type(features).__name__} "
                             "that numpy cannot convert to float") from None
    if f.ndim != 2 or f.shape[1] == 0:
        raise TaskIndexError(f"features must be a 2-D array (samples x dims); got shape {f.shape}: "
                             "reshape it, e.g. features.reshape(len(features), -1)")
    if not np.all(np.isfinite(f)):
        raise TaskIndexError("features contain NaN or infinite values: drop or fix those samples")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(f):
        raise TaskIndexError(f"labels must be a 1-D array with one label per sample; got shape {y.shape} "
                             f"for {len(f)} samples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise TaskIndexError(f"labels must be integer class ids; got dtype {y.dtype}: "
                                 "map class names to 0..K-1 first")
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise TaskIndexError(f"labels must contain at least 2 classes; got {len(classes)}: "
                             "LogME scores a classification task")
    return f, index.reshape(-1)


def _fit(features: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class: (maximised log evidence / N, alpha, beta) for the one-hot column of that class."""
    n = len(features)
    t = np.zeros((n, classes.max() + 1))
    t[np.arange(n), classes] = 1.0
    u, sigma, _ = np.linalg.svd(features, full_matrices=False)
    keep = sigma > sigma[0] * max(features.shape) * np.finfo(np.float64).eps
    if not keep.any():
        raise TaskIndexError("features are all zero: they carry no information; check the layer they come from")
    u, s = u[:, keep], sigma[keep, None] ** 2  # eigenvalues of F^T F beyond the rank are zero
    z2 = (u.T @ t) ** 2  # t in the left singular basis, squared, one column per class
    outside = ((t - u @ (u.T @ t)) ** 2).sum(0)  # the part of ||F m - t||^2 that no m can reach
    # Beyond these bounds on lambda = alpha / beta the evidence moves by a relative eps: clipping there keeps
    # alpha -> inf (t is noise) and beta -> inf (t is fitted exactly) finite, and makes them converge.
    low, high = s[-1, 0] * np.finfo(np.float64).eps, s[0, 0] / np.finfo(np.float64).eps

    def moments(lam):
        """gamma, N - gamma, m^T m and ||F m - t||^2 at lambda = alpha / beta."""
        shrink = lam / (lam + s)  # 1 - beta s_i / (alpha + beta s_i)
        gamma = (1 - shrink).sum(0)
        rest = (n - len(s)) + shrink.sum(0)
        mm = (s * z2 / (lam + s) ** 2).sum(0)  # m = V diag(sigma_i / (lambda + s_i)) U^T t
        res = (shrink ** 2 * z2).sum(0) + outside
        return gamma, rest, mm, res

    alpha, beta = np.ones(t.shape[1]), np.ones(t.shape[1])
    for _ in range(MAX_ITER):
        gamma, rest, mm, res = moments(alpha / beta)
        with np.errstate(divide="ignore"):
            new_alpha, new_beta = gamma / mm, rest / res  # m = 0 (t orthogonal to F) gives alpha = inf
        lam = new_alpha / new_beta
        new_alpha = np.where(lam > high, high * new_beta, new_alpha)
        new_beta = np.where(lam < low, new_alpha / low, new_beta)
        done = np.all(np.abs(new_alpha - alpha) <= RTOL * alpha) and np.all(np.abs(new_beta - beta) <= RTOL * beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    _, _, mm, res = moments(alpha / beta)
    # D/2 log alpha - 1/2 log det(alpha I + beta F^T F): the D - rank zero eigenvalues cancel
    log_det = np.log1p(s * beta / alpha).sum(0)
    evidence = (n * np.log(beta) - n * np.log(2 * np.pi) - beta * res - alpha * mm - log_det) / 2
    return evidence / n, alpha, beta


def logme(features, labels) -> float:
    """Mean over classes of the maximised log evidence per sample: higher should transfer better."""
    f, classes = _check(features, labels)
    return float(_fit(f, classes)[0].mean())
