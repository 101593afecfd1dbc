"""ImageNet semi-supervised fine-tuning on 1% of the labels (Chen et al. 2020, App. B.5).

tfds `imagenet2012_subset/1pct` (12,811 labelled images, the paper's split), every
layer trained from the pretrained encoder with a fresh linear head: Nesterov momentum
0.9, B = 4096, LR 0.05 x B/256 = 0.8, no warm-up, no weight decay, 60 epochs, random
crop + flip, global BN. Paper: ResNet-50 75.5% top-5 on the validation split. The SimCLR
v2 recipe (LARS, from the first projection-head layer): configs/imagenet_v2_finetune_1pct.py.
"""

from configs import base
from configs import imagenet


def get_config():
  c = imagenet.set_data(base.finetune_config())
  c.dataset = "imagenet2012_subset/1pct"  # train split = the 1% subset
  c.finetune.label_fraction = 1.0  # the tfds subset already is the fraction
  c.finetune.num_epochs = 60
  return c
