"""Datasets shipped inside the package (usable offline)."""

from simclr_jax.datasets.digits import Digits, prepared_builder as prepared_digits

__all__ = ["Digits", "prepared_digits"]
