"""The offline default (`make demo`): SimCLR on scikit-learn's 1,797 handwritten digits.

Built into <workdir>/tfds on first use (1,438 train / 359 test), no download. Sized to
finish in minutes on two CPU cores: a ResNet-18 (CIFAR stem) at a quarter of the width
on 16 px views. Afterwards linear probes on frozen h (all labels and 5 per class)
compare the pretrained encoder with a randomly initialised one. Its hyperparameters
were tuned here, with the paper's L (loss.official_scaling = False), not the official
objective 2L.
"""

from configs import base


def set_data(c):
  """The digits data and views, shared by every digits config."""
  c.dataset = "digits"
  c.eval_batch_size = 256
  c.data.image_size = 16  # the sources are 8x8: 16 px keeps every pixel, 4x cheaper than 32
  c.data.cache = True
  c.data.shuffle_buffer = 2048
  c.augment.flip = False  # digits are not mirror-symmetric
  c.augment.area_range = (0.3, 1.0)
  return c


def get_config():
  c = set_data(base.get_config())
  c.batch_size = 128
  c.num_epochs = 30
  c.model.width_multiplier = 0.25
  c.loss.temperature = 0.2
  c.loss.official_scaling = False  # the paper's L, which these settings were tuned with
  c.optim.warmup_epochs = 3
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.evals.online_probe.every_steps = 100
  c.evals.linear_probes.every_steps = 0  # at the end
  return c
