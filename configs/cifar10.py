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
  c.augment.jitter_impl = "simclrv2"
  c.augment.blur = False
  c.model.depth = 18
  c.model.cifar_stem = True
  c.model.head_num_layers = 3  # the official num_proj_layers default
  c.loss.temperature = 0.5
  c.loss.official_scaling = True
  c.optim.base_lr = 1.0
  c.optim.lr_scaling = "linear"
  c.optim.weight_decay = 1e-4
  c.optim.warmup_epochs = 10
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  return c
