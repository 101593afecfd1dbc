"""ImageNet pretraining, the paper's ResNet-50 setting (linear eval 69.3% top-1 at 1000
epochs; Chen et al. 2020, Table 6 / Appendix B.9).

B = 4096, 100 epochs, LARS with base LR 0.075 x sqrt(B) (= 0.3 x B/256 at B = 4096),
weight decay 1e-6, tau = 0.1, 10 warm-up epochs, 224 px, blur on (per image, on the
device as the official TF2 code), colour strength 1.0, global BN, online linear probe.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.dataset = "imagenet2012"
  c.train_split, c.eval_split = "train", "validation"
  c.batch_size = 4096  # paper Sec. 3 / Fig. 9
  c.eval_batch_size = 4096
  c.num_epochs = 100  # paper: 100 for ablations, up to 1000 for Table 6
  c.data.image_size = 224
  c.data.shuffle_buffer = 50_000
  c.augment.color_strength = 1.0  # paper Appendix A
  c.augment.blur = True  # ImageNet only (paper Appendix A)
  c.augment.blur_on = "device"
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = False
  c.model.dtype = "bfloat16"
  c.loss.temperature = 0.1  # paper Table 5 / Appendix B.9
  c.optim.base_lr = 0.075  # sqrt scaling: 0.075 x sqrt(4096) = 4.8
  c.optim.lr_scaling = "sqrt"
  c.optim.weight_decay = 1e-6
  c.optim.warmup_epochs = 10
  c.log_every_steps = 100
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 2500
  return c
