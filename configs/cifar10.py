"""CIFAR-10 pretraining, the official SimCLR README setting (linear eval ~91%).

ResNet-18 with the CIFAR stem, B = 512, 1000 epochs, LARS base LR 1.0 (linear scaling),
weight decay 1e-4, tau = 0.5, colour strength 0.5, no blur, 32 px.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = "cifar10"
  c.train_split, c.eval_split = "train", "test"
  c.batch_size = 512
  c.num_epochs = 1000
  c.data.image_size = 32
  c.data.cache = True  # 50k 32x32 images: 150 MB decoded
  c.data.shuffle_buffer = 50_000
  c.augment.color_strength = 0.5
  c.augment.blur = False
  c.model.depth = 18
  c.model.cifar_stem = True
  c.loss.temperature = 0.5
  c.optim.base_lr = 1.0
  c.optim.lr_scaling = "linear"
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 10
  c.log_every_steps = 50
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2000
  return c
