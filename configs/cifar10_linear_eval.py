"""CIFAR-10 linear evaluation, the official setting (official README: about 91% top-1
for the ResNet-18 of configs/cifar10.py).

Frozen encoder, zero-initialised linear classifier, Nesterov momentum 0.9,
LR 0.1 x B/256 = 0.2 at B = 512, no warm-up, cosine decay, 100 epochs, no weight
decay, random crop + flip; top-1/top-5 on the test split.
"""

from configs import base
from configs import cifar10


def get_config():
  c = cifar10.set_data(base.linear_eval_config())
  c.linear_eval.batch_size = 512
  c.linear_eval.num_epochs = 100
  c.linear_eval.optim.weight_decay = 0.0
  return c
