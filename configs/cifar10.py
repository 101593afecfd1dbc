"""CIFAR-10 pretraining, the official README's command (linear eval about 91% top-1):

  run.py --train_mode=pretrain --train_batch_size=512 --train_epochs=1000
    --learning_rate=1.0 --weight_decay=1e-4 --temperature=0.5 --dataset=cifar10
    --image_size=32 --resnet_depth=18 --use_blur=False --color_jitter_strength=0.5

ResNet-18 with the CIFAR stem, B = 512, 1000 epochs (97,657 steps, 976 warm-up), LARS
base LR 1.0 (linear scaling), weight decay 1e-4, tau = 0.5, colour strength 0.5 with the
code's default multiplicative brightness ("simclrv2"), no blur, 32 px, the code's default
3-layer projection head, the official objective.
"""

from configs import base


def set_data(c):
  """CIFAR-10 (the base's dataset, splits and 32 px), cached in memory."""
  c.data.cache = True  # 50k 32x32 images: 150 MB decoded
  c.data.shuffle_buffer = 50_000
  return c


def get_config():
  c = set_data(base.get_config())  # B = 512, LARS 1.0 linear, wd 1e-4, tau 0.5: the base's
  c.num_epochs = 1000
  c.model.head_num_layers = 3  # the official num_proj_layers default
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  return c
