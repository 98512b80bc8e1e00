"""Test-wide JAX settings; they must be applied before the first backend is created."""

import os

# TensorFlow (pulled in only by the data tests) must never claim accelerators or spam logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax

# Several fake CPU devices make the multi-device code paths testable on one machine.
jax.config.update("jax_num_cpu_devices", 4)
# Strict promotion: an accidental float64/int mix in library code fails loudly in tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")
