"""Fine-tuning the digits encoder on 10% of the labels (class-balanced, seeded).

The official semi-supervised protocol (every layer, fresh linear head, Nesterov SGD,
no warm-up, no weight decay, crop + flip, global BN; configs/imagenet_finetune_10pct.py)
on 144 labelled digits: B = 32, 30 epochs as the paper's 10% setting (120 steps).
"""

from configs import base
from configs import digits


def get_config():
  c = digits.set_data(base.finetune_config())
  c.finetune.batch_size = 32  # label_fraction 0.1 and 30 epochs: the base's
  c.finetune.eval_every_steps = 100
  c.log_every_steps = 20
  return c
