"""Devices, meshes and shardings: one code path for one device and for many.

The default data-parallel layout: a 1-d mesh over every device with axis ``"data"``; batches
are sharded along it, parameters and optimiser state are replicated, and ``jax.jit`` with
output shardings lets XLA insert the gradient all-reduce. The same program runs on one CPU,
several GPUs, a TPU slice or several hosts (after :func:`initialize_distributed`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from cnnjax.errors import ConfigError

DATA = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-d ``("data",)`` mesh over the first ``num_devices`` devices (default: all).

    Axis type ``Auto``: shardings are propagated by XLA from the ones we give to ``jit``.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ConfigError(
                f"`num_devices` must be between 1 and {len(devices)} (the devices JAX sees), "
                f"got {num_devices}."
            )
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


# XLA:CPU in jaxlib 0.10 hands convolutions to YNNPACK, whose kernel-gradient convolutions are
# an order of magnitude slower than XLA's own at CNN sizes (experiments/perf_notes.md). An
# empty list turns the YNNPACK fusions off for the executables it is passed to.
_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


def compiler_options(platform: str | None = None) -> dict[str, str]:
    """XLA options for ``jax.jit(..., compiler_options=...)`` that cnnjax compiles with.

    On CPU this keeps convolutions and dots away from YNNPACK, whose kernel gradients are
    much slower at CNN sizes; elsewhere, or when ``XLA_FLAGS`` already sets the YNNPACK fusion
    list (the user's choice wins), it is empty. ``platform``: "cpu", "gpu", "tpu"; default:
    the platform of JAX's default backend. Every executable cnnjax compiles gets them; your
    own jitted functions get them from :func:`jit`, or pass them yourself::

        step = jax.jit(step, compiler_options=cnnjax.parallel.compiler_options())
    """
    platform = platform or jax.default_backend()
    if platform != "cpu" or _YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {_YNN_OPTION: ""}


def init_compiler_options(platform: str | None = None) -> dict[str, str | int]:
    """:func:`compiler_options` for a function that runs once, such as a model's
    initialisation: on CPU also without LLVM's optimisations. Drawing every parameter's random
    numbers makes a large program that LLVM spends seconds optimising for one call
    (googlenet_small's first initialisation: 14.6 s, 2.7 s without; perf_notes.md)."""
    platform = platform or jax.default_backend()
    options: dict[str, str | int] = dict(compiler_options(platform))
    if platform == "cpu" and "xla_backend_optimization_level" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        options["xla_backend_optimization_level"] = 0
    return options


def jit(fun: Callable, **kwargs: Any) -> Any:
    """``jax.jit`` with :func:`compiler_options` for the default backend merged into
    ``compiler_options`` (yours win). On CPUs it is what keeps a convolution network's
    gradients off YNNPACK; elsewhere it is plain ``jax.jit``."""
    options = {**compiler_options(), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)


def keep_freed_host_memory(limit_bytes: int = 1 << 30) -> bool:
    """Lets glibc's ``malloc`` keep up to ``limit_bytes`` of freed memory for reuse.

    XLA:CPU allocates an executable's large temporaries afresh on every call, and glibc hands
    blocks that large back to the operating system when they are freed (``mmap``, heap trim),
    so each call page-faults them in again. Short, memory-heavy programs pay most (the gemm
    backend's im2col matrices); long training steps do not change (``experiments/
    perf_notes.md``). The process keeps its peak heap instead of shrinking. Process-wide, so
    nothing in cnnjax calls it: it is the caller's choice (``experiments.conv_backends
    --keep_freed_memory``). Returns False, changing nothing, where the C library is not glibc.
    """
    is_int = isinstance(limit_bytes, int) and not isinstance(limit_bytes, bool)
    if not is_int or not 0 < limit_bytes < 2**31:
        raise ValueError(
            f"`limit_bytes` must be an int in (0, 2**31) (mallopt takes a C int), "
            f"got {limit_bytes!r}."
        )
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    # Both are needed: above the mmap threshold blocks come and go by mmap, below it they
    # come from the heap and a trim above the trim threshold returns them.
    return bool(mallopt(m_mmap_threshold, limit_bytes) and mallopt(m_trim_threshold, limit_bytes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, P(DATA))


def check_global_batch(batch_size: int, num_devices: int, name: str = "batch_size") -> None:
    if batch_size % num_devices:
        raise ConfigError(
            f"`{name}`={batch_size} must be divisible by the number of devices ({num_devices}) "
            f"so every device gets an equal share; use e.g. "
            f"{max(num_devices, batch_size // num_devices * num_devices)}."
        )


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts multi-host JAX when asked to, from arguments or the environment.

    Environment variables ``CNNJAX_COORDINATOR``, ``CNNJAX_NUM_PROCESSES`` and
    ``CNNJAX_PROCESS_ID`` stand in for missing arguments; on managed clusters (TPU pods,
    SLURM) ``jax.distributed.initialize()`` with no arguments finds them itself, which
    ``CNNJAX_DISTRIBUTED=auto`` requests. Returns True when multi-host was initialised.
    """
    coordinator_address = coordinator_address or os.environ.get("CNNJAX_COORDINATOR")
    if num_processes is None and "CNNJAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["CNNJAX_NUM_PROCESSES"])
    if process_id is None and "CNNJAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["CNNJAX_PROCESS_ID"])
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError(
                "multi-host training needs the coordinator address, the number of processes "
                "and this process's id; got "
                f"{coordinator_address=}, {num_processes=}, {process_id=}."
            )
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if os.environ.get("CNNJAX_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return True
    return False


def to_global(x, sharding: NamedSharding) -> jax.Array:
    """A host array as a global ``jax.Array`` with ``sharding``, on one host or many.

    Multi-host: every process passes the same full array; for a batch-sharded sharding each
    process contributes only its own rows (``x`` split evenly by process index), so no host
    loads another host's share.
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if sharding.spec == P():
        return jax.make_array_from_process_local_data(sharding, x, x.shape)
    rows = x.shape[0] // jax.process_count()
    local = x[jax.process_index() * rows : (jax.process_index() + 1) * rows]
    return jax.make_array_from_process_local_data(sharding, local, x.shape)


def from_process_local(x, sharding: NamedSharding) -> jax.Array:
    """This process's rows of a batch-sharded array as the global ``jax.Array``: the rows of
    process ``p`` of ``P`` are rows ``[p·n, (p+1)·n)`` of the global array (n rows each)."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
