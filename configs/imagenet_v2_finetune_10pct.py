"""SimCLR v2 fine-tuning on 10% of the ImageNet labels: configs/imagenet_v2_finetune_1pct.py
(the official README's recipe) on `imagenet2012_subset/10pct` (128,116 images) for 30
epochs (3,754 steps). Released v2 R50-1x: 68.4% top-1 (official README table).
"""

from configs import imagenet_v2_finetune_1pct


def get_config():
  c = imagenet_v2_finetune_1pct.get_config()
  c.dataset = "imagenet2012_subset/10pct"
  c.finetune.num_epochs = 30
  return c
