"""Tools on top of `main.py` (not building blocks of simclr_jax): `python -m tools.sweep`."""
