"""The batch-size sweep's base config (`python -m simclr_jax.sweep`, docs/scaling.md).

configs/digits.py with num_epochs as a float field, so that the sweep's epoch budgets
may be fractions of an epoch (e.g. --epochs=0.5 for a quick check); the sweep sets
batch_size and num_epochs of every run.
"""

from configs import digits


def get_config():
  c = digits.get_config()
  # ConfigDict keeps a field's type: re-create the int field as a float one.
  del c["num_epochs"]
  c.num_epochs = 15.0
  return c
