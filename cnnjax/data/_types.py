"""In-memory datasets: every split as one array of images and one of labels."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Split:
    """Images (N, H, W, C), uint8 pixels or float32 after whitening, and int32 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32)
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{len(self.images)} images but {len(self.labels)} labels in one split."
            )
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got {self.images.shape}.")

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    """A named dataset with ``train``, ``validation`` and possibly ``test`` splits."""

    name: str
    num_classes: int
    splits: dict[str, Split]
    source: str = ""  # where the arrays came from (e.g. a cache), for the run's log
    class_names: tuple[str, ...] = ()  # label i is class_names[i], when the source names them

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.splits.values())).images.shape[1:])

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,}" for k, v in self.splits.items())
        where = f" ({self.source})" if self.source else ""
        return f"{self.name}: {self.num_classes} classes, images {self.image_shape}, {sizes}{where}"


def carve_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): sorted row indices of a fixed-seed shuffle of ``n`` examples, the
    first ``round(fraction · n)`` (at least one) held out. The same rows whether the split is
    decoded in memory or streamed."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {fraction}.")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def subset_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows of a fixed-seed ``fraction`` of ``n`` examples (``train_fraction``);
    smaller fractions are subsets of larger ones."""
    order = np.random.default_rng(seed + 1).permutation(n)
    return np.sort(order[: max(1, round(fraction * n))])


def carve_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Splits a fixed-seed shuffle of ``train`` into (train, validation)."""
    rest, val = carve_indices(len(train), fraction, seed)
    return (
        Split(train.images[rest], train.labels[rest]),
        Split(train.images[val], train.labels[val]),
    )
