"""ImageNet pretraining, the SimCLR v1 paper's ResNet-50 setting (Chen et al. 2020,
Appendix B.9; linear eval 69.3% top-1 after 1000 epochs, Table 6; the official README
notes about 64.5% for its 100-epoch command).

B = 4096, 100 epochs (31,279 steps, 3,127 warm-up), LARS with base LR 0.075 x sqrt(B)
(= 0.3 x B/256 at B = 4096), weight decay 1e-6, tau = 0.1, 10 warm-up epochs, 224 px,
2-layer projection head (v1), additive brightness jitter (v1 paper's appendix:
jitter_impl "simclrv1"), colour strength 1.0, blur on (per image, on the device), global
BN, online linear probe; the official objective (2 x the paper's L). For SimCLR v2 see
configs/imagenet_v2.py.
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
  c.augment.jitter_impl = "simclrv1"  # v1 paper Appendix A: tf.image.random_brightness
  c.augment.blur = True  # ImageNet only (paper Appendix A)
  c.augment.blur_on = "device"
  c.model.depth = 50
  c.model.width_multiplier = 1.0
  c.model.cifar_stem = False
  c.model.dtype = "bfloat16"
  c.model.head_num_layers = 2  # v1 paper
  c.loss.temperature = 0.1  # paper Table 5 / Appendix B.9
  c.loss.official_scaling = True  # the objective the hyperparameters were tuned with
  c.optim.base_lr = 0.075  # sqrt scaling: 0.075 x sqrt(4096) = 4.8
  c.optim.lr_scaling = "sqrt"
  c.optim.weight_decay = 1e-6  # v1 paper (the v2 code and README: 1e-4)
  c.optim.warmup_epochs = 10
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2500
  return c
