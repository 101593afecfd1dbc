"""The sweeps' base config (`python -m tools.sweep`; docs/studies.md, docs/scaling.md).

configs/digits.py made small enough for a grid of 8 runs in about 15 minutes on two CPU
cores: a ResNet-18 (CIFAR stem) at 1/8 width on 16 px views (the digits are 8 x 8
scans, so 16 px loses nothing). num_epochs is a float field here so that a budget may be
a fraction of an epoch (e.g. --epochs=0.5 for a quick check).
"""

from configs import digits


def get_config():
  c = digits.get_config()
  # ConfigDict keeps a field's type: re-create the int field as a float one.
  del c["num_epochs"]
  c.num_epochs = 15.0
  c.data.image_size = 16
  c.model.width_multiplier = 0.125
  return c
