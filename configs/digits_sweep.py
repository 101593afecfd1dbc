"""The sweeps' base config (`python -m tools.sweep`; docs/studies.md, docs/scaling.md).

configs/digits.py made small enough for a grid of 8 runs in about 15 minutes on two CPU
cores: a ResNet-18 (CIFAR stem) at 1/8 width on 16 px views (the digits are 8 x 8
scans, so 16 px loses nothing). The batch_epochs study sets batch_size and num_epochs
of every run; num_epochs is a float field (configs/base.py) so that a budget may be a
fraction of an epoch (e.g. --epochs=0.5 for a quick check).
"""

from configs import digits


def get_config():
  c = digits.get_config()
  c.num_epochs = 15.0
  c.model.width_multiplier = 0.125
  return c
