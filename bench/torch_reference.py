r"""The same SimCLR train step in PyTorch eager, as a within-run CPU reference.

  pip install torch  # bench-only; not a project requirement
  python bench/torch_reference.py --batch_size=64 --memory_format=channels_last

The step matches bench/train_step.py's resnet18_cifar preset: ResNet-18 with the CIFAR
stem and this project's block layout (projection shortcut in the first block of every
stage, strided convs padded (k-1)//2, last BN of each branch gamma = 0), both views in
one pass of 2 x batch_size images, the 2-layer projection head (Dense + BN + ReLU,
Dense + BN without beta) to 128, NT-Xent at tau = 0.5 over the 2N embeddings, the
online linear probe (1000 classes) on the detached features, and an SGD + momentum +
weight decay update (LARS's per-layer trust ratio is a few vector ops per layer).
Only CPU timings are meaningful here: it sets torch's threads to the host's cores.
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags

import torch
from torch import nn
import torch.nn.functional as F

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Source images (2 views each).")
flags.DEFINE_integer("steps", 5, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
flags.DEFINE_enum("memory_format", "channels_last", ["contiguous", "channels_last"],
                  "Activation layout: NCHW (contiguous) or NHWC (channels_last).")
flags.DEFINE_string("json", None, "Write the results here as JSON.")


def conv(cin: int, cout: int, k: int, stride: int) -> nn.Conv2d:
  # Odd k: (k-1)//2 on each side, which is simclr_jax's rule for strided and SAME convs.
  return nn.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, bias=False)


class BasicBlock(nn.Module):
  """3x3 conv-BN-ReLU, 3x3 conv-BN(gamma 0), + (projected) shortcut, ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, projection: bool):
    super().__init__()
    self.conv1, self.bn1 = conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
    self.conv2, self.bn2 = conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
    nn.init.zeros_(self.bn2.weight)
    self.proj = (nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                 if projection else nn.Identity())

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + self.proj(x))


class SimCLRNet(nn.Module):
  """ResNet-18 (CIFAR stem) -> h [B, 512]; head -> z [B, 128]; probe(h.detach())."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    layers = [conv(3, 64, 3, 1), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for width, stride in zip((64, 128, 256, 512), (1, 2, 2, 2)):
      layers += [BasicBlock(cin, width, stride, True), BasicBlock(width, width, 1, False)]
      cin = width
    self.encoder = nn.Sequential(*layers)
    self.head = nn.Sequential(nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(),
                              nn.Linear(512, 128, bias=False), nn.BatchNorm1d(128))
    self.head[-1].bias.requires_grad_(False)  # the last BN has a gamma but no beta
    self.probe = nn.Linear(512, num_classes)

  def forward(self, x):
    h = self.encoder(x).mean(dim=(2, 3))
    return self.head(h), self.probe(h.detach())


def nt_xent(z: torch.Tensor, tau: float) -> torch.Tensor:
  """NT-Xent over z [2N, D]: views i and i + N are positives, the other 2N - 2 negatives."""
  z = F.normalize(z, dim=1)
  n2 = z.shape[0]
  logits = z @ z.t() / tau
  logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
  targets = (torch.arange(n2) + n2 // 2) % n2
  return F.cross_entropy(logits, targets)


def main(argv):
  del argv
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  fmt = (torch.channels_last if FLAGS.memory_format == "channels_last"
         else torch.contiguous_format)
  net = SimCLRNet().to(memory_format=fmt)
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  b = FLAGS.batch_size
  views = torch.rand(2 * b, 3, 32, 32).to(memory_format=fmt)
  labels = torch.randint(0, 1000, (b,))

  def step():
    opt.zero_grad(set_to_none=True)
    z, logits = net(views)
    loss = nt_xent(z, 0.5) + F.cross_entropy(logits, torch.cat([labels, labels]))
    loss.backward()
    opt.step()
    return loss.item()

  for _ in range(FLAGS.warmup):
    step()
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  result = {"framework": f"torch {torch.__version__}", "memory_format": FLAGS.memory_format,
            "batch_size": b, "threads": torch.get_num_threads(),
            "step_s_median": statistics.median(times), "step_s_all": times}
  for k in ("framework", "memory_format", "step_s_median"):
    print(f"{k:<16} {result[k]}")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
