"""ImageNet linear evaluation, the official protocol (Chen et al. 2020, Appendix B.6).

Frozen ResNet-50 encoder (BN in inference mode), zero-initialised linear classifier on
h, Nesterov momentum 0.9, LR 0.1 x B/256 = 1.6 at B = 4096, no warm-up, cosine decay,
90 epochs, weight decay 1e-6, random crop + flip; top-1/top-5 on the validation split.
Paper: ResNet-50 69.3% top-1 (89.0% top-5), 2x 74.2%, 4x 76.5% (1000-epoch encoders).
The protocol's numbers are base.py's linear_eval defaults; the model comes from the
checkpoint:

  python main.py --config=configs/imagenet_linear_eval.py --workdir=workdirs/in_lin \
      --config.init_from=workdirs/imagenet
"""

from configs import base
from configs import imagenet


def get_config():
  return imagenet.set_data(base.linear_eval_config())
