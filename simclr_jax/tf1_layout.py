"""Where the official SimCLR TF1 code (resnet.py, model_util.py) stores each parameter.

Its `tf.layers` name variables by creation order within a scope: `conv2d`, `conv2d_1`,
..., `batch_normalization`, `batch_normalization_1`, ... (separate counters), under
`base_model/`; the projection head uses `head_contrastive/nl_{j}/dense/kernel` and
`head_contrastive/nl_{j}/batch_normalization/*` ("linear" mode: `l_0`), the
supervised head `head_supervised/linear_layer/dense/{kernel,bias}`.

`encoder_slots` replays the official creation order for an architecture and pairs every
TF1 variable with the parameter of this project's network (SimCLRModel) that holds the
same values; the layouts agree (conv kernels HWIO, dense kernels [in, out]).
"""

import dataclasses
import itertools

from simclr_jax.models import resnet

# (flax path: (collection, module, ..., leaf), TF1 variable name)
Slot = tuple[tuple[str, ...], str]

BASE, CONTRASTIVE, SUPERVISED = "base_model", "head_contrastive", "head_supervised"
SCOPES = (BASE, CONTRASTIVE, SUPERVISED)
_STAGE_WIDTHS = (64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class Arch:
  """What the names of base_model/ tell apart."""
  depth: int
  cifar_stem: bool
  sk: bool  # selective kernels, ResNet-D shortcut and (ImageNet stem) ResNet-D stem
  se: bool  # squeeze-excitation

  @property
  def bottleneck(self) -> bool:
    return resnet.block_layout(self.depth)[0] == "bottleneck"

  def describe(self) -> str:
    return (f"ResNet-{self.depth}{' SK' if self.sk else ''}{' SE' if self.se else ''}, "
            f"{'CIFAR' if self.cifar_stem else 'ImageNet'} stem")


class Namer:
  """Hands out the official names in creation order and records the slots."""

  def __init__(self):
    self.count = {"conv2d": 0, "batch_normalization": 0}
    self.slots: list[Slot] = []
    # (flax module path, nominal stage width) of each SK fc conv / SE reduce conv.
    self.sk_convs: list[tuple[tuple[str, ...], int]] = []
    self.se_convs: list[tuple[tuple[str, ...], int]] = []

  def _next(self, kind: str) -> str:
    i = self.count[kind]
    self.count[kind] += 1
    return f"{BASE}/{kind}" + (f"_{i}" if i else "")

  def conv(self, *path: str, bias: bool = False) -> None:
    name = self._next("conv2d")
    self.slots.append((("params", "encoder", *path, "kernel"), f"{name}/kernel"))
    if bias:
      self.slots.append((("params", "encoder", *path, "bias"), f"{name}/bias"))

  def bn(self, *path: str) -> None:
    self.slots += bn_slots(("encoder", *path), self._next("batch_normalization"), beta=True)


def bn_slots(module: tuple[str, ...], tf_name: str, beta: bool) -> list[Slot]:
  """Flax BatchNorm (scale, bias; mean, var) <- TF (gamma, beta; moving_*)."""
  slots = [(("params", *module, "scale"), f"{tf_name}/gamma"),
           (("batch_stats", *module, "mean"), f"{tf_name}/moving_mean"),
           (("batch_stats", *module, "var"), f"{tf_name}/moving_variance")]
  if beta:
    slots.append((("params", *module, "bias"), f"{tf_name}/beta"))
  return slots


def encoder_slots(arch: Arch) -> Namer:
  """Replays resnet_v1_generator's variable creation for `arch`."""
  n = Namer()
  if arch.cifar_stem or not arch.sk:
    n.conv("stem_conv")
  else:  # ResNet-D stem
    n.conv("stem_conv_a"), n.bn("stem_bn_a"), n.conv("stem_conv_b"), n.bn("stem_bn_b")
    n.conv("stem_conv")
  n.bn("stem_bn")
  for stage, num_blocks in enumerate(resnet.block_layout(arch.depth)[1], start=1):
    for i in range(num_blocks):
      block = f"block{stage}_{i}"
      if i == 0:
        n.conv(block, "proj_conv"), n.bn(block, "proj_bn")
      n.conv(block, "conv1"), n.bn(block, "bn1")
      if arch.bottleneck:
        if arch.sk:
          sk = (block, "sk_conv2")
          n.conv(*sk, "conv"), n.bn(*sk, "bn"), n.conv(*sk, "fc_conv")
          n.sk_convs.append(((*sk, "fc_conv"), _STAGE_WIDTHS[stage - 1]))
          n.bn(*sk, "fc_bn"), n.conv(*sk, "mix_conv")
        else:
          n.conv(block, "conv2"), n.bn(block, "bn2")
        n.conv(block, "conv3"), n.bn(block, "bn3")
      else:
        n.conv(block, "conv2"), n.bn(block, "bn2")
      if arch.se:
        n.conv(block, "se", "reduce", bias=True)
        n.se_convs.append(((block, "se", "reduce"), _STAGE_WIDTHS[stage - 1]))
        n.conv(block, "se", "expand", bias=True)
  return n


def candidate_archs() -> list[Arch]:
  """Every architecture the official code can build (SK needs bottleneck blocks)."""
  return [a for d, c, sk, se in itertools.product(resnet.SUPPORTED_DEPTHS, (False, True),
                                                  (False, True), (False, True))
          if (a := Arch(d, c, sk, se)).bottleneck or not sk]


def head_slots(mode: str, num_layers: int) -> list[Slot]:
  """model_util.projection_head's variables ("none": no variables)."""
  if mode == "none":
    return []
  prefixes = ["l_0"] if mode == "linear" else [f"nl_{j}" for j in range(num_layers)]
  slots = []
  for j, prefix in enumerate(prefixes):
    last = j == len(prefixes) - 1
    slots.append((("params", "head", f"dense_{j}", "kernel"),
                  f"{CONTRASTIVE}/{prefix}/dense/kernel"))
    slots += bn_slots(("head", f"bn_{j}"), f"{CONTRASTIVE}/{prefix}/batch_normalization",
                      beta=not last)
  return slots


SUPERVISED_SLOTS = [(("params", "classifier", leaf), f"{SUPERVISED}/linear_layer/dense/{leaf}")
                    for leaf in ("kernel", "bias")]
