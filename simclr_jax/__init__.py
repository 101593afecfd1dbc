"""simclr_jax: SimCLR in JAX/Flax."""

from simclr_jax import platform as _platform

# Must run before JAX initialises its backend; importing the package is the earliest
# point every entry point (main.py, tests, benchmarks) shares.
_platform.configure_xla_flags()
