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


def patch_whitening(images: np.ndarray, kernel_size: int | tuple[int, int], eps: float = 5e-4):
    """A convolution kernel that whitens image patches: the first layer of airbench.

    ``images`` (N, H, W, C), already normalised as the network will see them. The (uncentred)
    covariance of every ``kh × kw × C`` patch is diagonalised, Σ = V Λ Vᵀ; each eigenvector,
    scaled by 1/sqrt(λ + ``eps``), becomes a filter, once as is and once negated (so a ReLU-like
    activation after it keeps both signs): the kernel (kh, kw, C, 2·kh·kw·C) has filters
    ``[v₁ … v_D, −v₁ … −v_D]`` in order of decreasing eigenvalue. The same idea as
    :func:`fit_zca` applied to patches instead of whole images, and as a layer instead of a
    preprocessing pass. Computed in float64; each eigenvector's sign is fixed (its largest
    entry positive) so that the kernel is the same on every machine.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1] < kh or x.shape[2] < kw:
        raise ValueError(
            f"`images` must be (N, H, W, C) with H >= {kh} and W >= {kw}, got {x.shape}."
        )
    _, h, w, c = x.shape
    second_moment, count = np.zeros((kh * kw * c,) * 2), 0
    for start in range(0, len(x), 256):  # in chunks: all patches at once would be large
        chunk = np.asarray(x[start : start + 256], np.float64)
        taps = [
            chunk[:, i : h - kh + 1 + i, j : w - kw + 1 + j] for i in range(kh) for j in range(kw)
        ]
        patches = np.stack(taps, axis=3).reshape(-1, kh * kw * c)  # rows ordered (kh, kw, C)
        second_moment += patches.T @ patches
        count += len(patches)
    lam, vecs = np.linalg.eigh(second_moment / count)
    lam, vecs = lam[::-1], vecs[:, ::-1]  # decreasing eigenvalue
    vecs = vecs * np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(vecs.shape[1])])
    filters = (vecs / np.sqrt(np.maximum(lam, 0.0) + eps)).reshape(kh, kw, c, -1)
    return np.concatenate([filters, -filters], axis=-1).astype(np.float32)


def standardization(images: np.ndarray) -> Normalization:
    """Per-channel mean and standard deviation of uint8 ``images`` (N, H, W, C), in [0, 1]
    units: what ``preprocess="standardize"`` applies."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0) + 1e-6
    return Normalization(1.0 / 255.0, tuple(map(float, mean)), tuple(map(float, std)))


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
        return dataset, standardization(train)
    shape = train.shape[1:]
    flat = lambda s: global_contrast_normalize(s.images.reshape(len(s), -1) / 255.0)
    mean, w = fit_zca(flat(dataset.splits["train"]))
    splits = {
        name: Split(((flat(s) - mean) @ w).astype(np.float32).reshape(-1, *shape), s.labels)
        for name, s in dataset.splits.items()
    }
    identity = Normalization(1.0, (0.0,) * channels, (1.0,) * channels)
    return dataclasses.replace(dataset, splits=splits), identity
