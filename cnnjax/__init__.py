"""cnnjax: convolutional networks as small pure JAX functions, composed in Flax.

On CPUs, jit your own functions with :func:`cnnjax.jit` (``jax.jit`` plus the XLA options that
keep convolution gradients off the slow YNNPACK kernels of jaxlib 0.10).

``import cnnjax`` is light: it never imports TensorFlow (only :mod:`cnnjax.data` does, lazily,
when a TFDS or image-folder dataset is requested).
"""

from cnnjax import ops
from cnnjax.parallel import jit
from cnnjax.receptive_field import (
    ReceptiveField,
    empirical_receptive_field,
    last_spatial_field,
    receptive_field,
    receptive_field_table,
)

__version__ = "0.1.0"
__all__ = [
    "ReceptiveField",
    "__version__",
    "empirical_receptive_field",
    "jit",
    "last_spatial_field",
    "ops",
    "receptive_field",
    "receptive_field_table",
]
