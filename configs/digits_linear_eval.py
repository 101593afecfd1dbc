"""Linear evaluation of the offline digits encoder (`make demo`'s pretraining run).

The official protocol (frozen encoder, zero-initialised linear classifier, Nesterov
SGD, crop + flip, cosine, no warm-up; configs/cifar10_linear_eval.py), sized for 1,438
training images: B = 128, 60 epochs (660 steps), no weight decay. Digits are not
mirror-symmetric, so the "flip" stays off (configs/digits.py). kNN and export need no
protocol of their own and use configs/digits.py with --config.mode=knn / export;
fine-tuning: configs/digits_finetune.py. Linear evaluation:

  python main.py --config=configs/digits_linear_eval.py --workdir=workdirs/demo_lin \
      --config.init_from=workdirs/demo
  # fast path (cached features, no augmentation):
  python main.py --config=configs/digits_linear_eval.py --workdir=workdirs/demo_lin \
      --config.init_from=workdirs/demo --config.linear_eval.cached_features=True
"""

from configs import base
from configs import digits


def get_config():
  c = digits.set_data(base.linear_eval_config())
  c.linear_eval.batch_size = 128
  c.linear_eval.num_epochs = 60
  c.linear_eval.optim.weight_decay = 0.0
  c.linear_eval.eval_every_steps = 100
  c.log_every_steps = 50
  return c
