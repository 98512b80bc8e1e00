"""cnnjax: convolutional networks as small pure JAX functions, composed in Flax.

``import cnnjax`` is light: it never imports TensorFlow (only :mod:`cnnjax.data` does, lazily,
when a TFDS or image-folder dataset is requested).
"""

from cnnjax import ops

__version__ = "0.1.0"
__all__ = ["__version__", "ops"]
