"""simclr_jax: SimCLR in JAX/Flax.

Importing the package changes no process settings: entry points (main.py,
tests/conftest.py, bench/harness.py) call `simclr_jax.platform` first.
"""
