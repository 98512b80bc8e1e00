"""Preprocessing fitted on the training split: per-channel standardisation, or global contrast
normalisation followed by ZCA whitening (the All-CNN paper's recipe)."""

from __future__ import annotations

import dataclasses

import numpy as np

from cnnjax.data._types import Dataset, Split

METHODS = ("standardize", "gcn_zca", "none")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Applied on the device to every batch: ``(x · scale − mean) / std`` per channel."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


def global_contrast_normalize(x: np.ndarray, scale: float = 1.0, eps: float = 1e-8) -> np.ndarray:
    """Per image: subtract its mean, divide by its root-mean-square. ``x``: (N, D) float."""
    x = x - x.mean(axis=1, keepdims=True)
    return scale * x / np.sqrt(eps + (x**2).mean(axis=1, keepdims=True))


def fit_zca(x: np.ndarray, eps: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening fitted on ``x`` (N, D): returns (mean (D,), W (D, D)), W = U (Λ + ε)^-½ Uᵀ.

    ``(x − mean) W`` has (nearly) identity covariance; ε damps directions of tiny variance
    (relative to the mean eigenvalue), and ZCA, unlike PCA whitening, keeps images image-like.
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False, bias=True)
    lam, u = np.linalg.eigh(cov)
    lam = np.maximum(lam, 0.0)
    w = (u / np.sqrt(lam + eps * lam.mean())) @ u.T
    return mean, w


def preprocess(dataset: Dataset, method: str = "standardize") -> tuple[Dataset, Normalization]:
    """Fits ``method`` on the training split and returns the data plus what the device applies.

    ``standardize`` keeps uint8 images (4x less memory) and returns the per-channel statistics;
    ``gcn_zca`` transforms every split on the host to float32 and returns the identity.
    """
    if method not in METHODS:
        raise ValueError(f"`preprocess` must be one of {METHODS}, got {method!r}.")
    train = dataset.splits["train"].images
    channels = train.shape[-1]
    if method == "none":
        return dataset, Normalization(1.0 / 255.0, (0.0,) * channels, (1.0,) * channels)
    if method == "standardize":
        pixels = train.reshape(-1, channels).astype(np.float64) / 255.0
        mean, std = pixels.mean(axis=0), pixels.std(axis=0) + 1e-6
        return dataset, Normalization(1.0 / 255.0, tuple(map(float, mean)), tuple(map(float, std)))
    shape = train.shape[1:]
    flat = lambda s: global_contrast_normalize(s.images.reshape(len(s), -1) / 255.0)
    mean, w = fit_zca(flat(dataset.splits["train"]))
    splits = {
        name: Split(((flat(s) - mean) @ w).astype(np.float32).reshape(-1, *shape), s.labels)
        for name, s in dataset.splits.items()
    }
    identity = Normalization(1.0, (0.0,) * channels, (1.0,) * channels)
    return dataclasses.replace(dataset, splits=splits), identity
