"""Process start-up settings that must be in place before JAX picks its backend."""

import importlib.metadata
import os

# jaxlib >= 0.10 sends every CPU convolution to YNNPACK, whose weight-gradient
# convolutions are ~3x slower than XLA's own; this keeps YNNPACK off them (same values,
# measured 10.9 s -> 3.8 s for a ResNet-18 SimCLR step on 64 images, 2 cores).
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)

_ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax_cuda", "libtpu", "jax-rocm", "jax_rocm")


def _accelerator_plugin_installed() -> bool:
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(_ACCELERATOR_DISTRIBUTIONS):
      return True
  return False


def cpu_only() -> bool:
  """True when JAX will run on the CPU backend alone."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not _accelerator_plugin_installed()


def merge_xla_flags(existing: str, extra) -> str:
  """Appends each flag of `extra` whose name the user has not set already."""
  flags = existing.split()
  names = {f.split("=", 1)[0] for f in flags}
  flags += [f for f in extra if f.split("=", 1)[0] not in names]
  return " ".join(flags)


def configure_xla_flags() -> None:
  """Merges the CPU flags into XLA_FLAGS, only when running on the CPU backend.

  Has an effect only before JAX initialises its backend (first device query).
  """
  if cpu_only():
    os.environ["XLA_FLAGS"] = merge_xla_flags(os.environ.get("XLA_FLAGS", ""), CPU_XLA_FLAGS)


def hide_accelerators_from_tensorflow() -> None:
  """Keeps TensorFlow (tf.data, on the host) off GPUs/TPUs: they belong to JAX."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # already initialised, or no such device type: nothing to hide
