"""Process settings of the tests: those main.py makes, before any test starts JAX."""

from simclr_jax import platform

platform.configure_xla_flags()
platform.hide_accelerators_from_tensorflow()
