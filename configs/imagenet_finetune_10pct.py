"""ImageNet semi-supervised fine-tuning on 10% of the labels (Chen et al. 2020, B.5).

tfds `imagenet2012_subset/10pct` (128,116 labelled images), as the 1% config but 30
epochs. Paper: ResNet-50 87.8% top-5 on the validation split.
"""

from configs import imagenet_finetune_1pct


def get_config():
  c = imagenet_finetune_1pct.get_config()
  c.dataset = "imagenet2012_subset/10pct"
  c.finetune.num_epochs = 30
  return c
