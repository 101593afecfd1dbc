"""ResNet v1 encoder f(.) of SimCLR, as in the official TF code (tf2/resnet.py).

Layout details that follow the official code rather than torchvision:
  * bottleneck blocks put the stride on the 3x3 conv ("v1.5");
  * strided convs pad (k-1)//2 before and k-1-(k-1)//2 after, then run VALID
    (stride-1 convs use SAME), so results do not depend on the input parity;
  * the first block of every stage has a projection shortcut (1x1 conv + BN),
    even when the shape does not change (ResNet-18/34, stage 1);
  * the last BN of each residual branch starts with gamma = 0;
  * conv kernels use tf.keras VarianceScaling() defaults: scale 1, fan_in,
    truncated normal; convs have no bias;
  * sk_ratio / se_ratio > 0: SimCLR v2's selective kernels (with the ResNet-D stem and
    shortcut) and squeeze-excitation, as the official TF1 resnet.py
    (selective_kernel.py).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.choices import DEPTHS, FREEZE_THROUGH
from simclr_jax.models.layers import NormMixin, conv, relu
from simclr_jax.models.selective_kernel import SKConv, SqueezeExcite, avg_pool_2x2

Array = Any
Dtype = Any

# depth -> (block kind, blocks per stage).
_ARCHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
SUPPORTED_DEPTHS = DEPTHS  # the keys of _ARCHS
_STEM_WIDTH = 64
_STAGE_WIDTHS = (64, 128, 256, 512)
_STAGE_STRIDES = (1, 2, 2, 2)
_BOTTLENECK_EXPANSION = 4


def is_frozen(param_name: str, freeze_through: int) -> bool:
  """Whether the ResNet submodule `param_name` (e.g. "stem_bn", "block2_0") is frozen."""
  if param_name.startswith("stem_"):
    return freeze_through >= 0
  return int(param_name[len("block"):].split("_")[0]) <= freeze_through


def check_depth(depth: int) -> None:
  """Raises ValueError unless `depth` is a supported ResNet depth."""
  if isinstance(depth, bool) or depth not in _ARCHS:
    raise ValueError(f"ResNet depth must be one of {SUPPORTED_DEPTHS}, got {depth!r}.")


def block_layout(depth: int) -> tuple[str, tuple[int, ...]]:
  """("basic" | "bottleneck", blocks per stage) of a supported depth."""
  check_depth(depth)
  return _ARCHS[depth]


def check_width_multiplier(width_multiplier: float) -> None:
  """Raises ValueError unless `width_multiplier` is a finite number > 0."""
  if (isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float))
      or not math.isfinite(width_multiplier) or width_multiplier <= 0):
    raise ValueError(
        f"width_multiplier must be a finite number > 0, got {width_multiplier!r}.")


def check_bn_args(bn_momentum: float, bn_epsilon: float) -> None:
  """Raises ValueError unless 0 <= momentum < 1 and epsilon > 0."""
  if not 0.0 <= bn_momentum < 1.0:
    raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}.")
  if not bn_epsilon > 0.0:
    raise ValueError(f"bn_epsilon must be > 0, got {bn_epsilon!r}.")


def check_sk_se(depth: int, sk_ratio: float, se_ratio: float) -> None:
  """Raises ValueError unless both ratios are finite and >= 0, and SK has bottlenecks."""
  for name, v in (("sk_ratio", sk_ratio), ("se_ratio", se_ratio)):
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
        or v < 0):
      raise ValueError(f"{name} must be a finite number >= 0, got {v!r}.")
  if sk_ratio > 0 and _ARCHS[depth][0] != "bottleneck":
    raise ValueError(f"sk_ratio > 0 needs a bottleneck depth "
                     f"{tuple(d for d in SUPPORTED_DEPTHS if _ARCHS[d][0] == 'bottleneck')}"
                     f" (the official code cannot build SK ResNet-{depth}), got "
                     f"sk_ratio={sk_ratio!r}.")


def scaled_width(channels: int, width_multiplier: float) -> int:
  """Channel count of a layer of nominal width `channels` (>= 1)."""
  return max(1, int(round(channels * width_multiplier)))


def feature_dim(depth: int, width_multiplier: float) -> int:
  """Size C of h: 512*w (depth 18/34) or 4 * (512*w) (bottleneck depths)."""
  check_depth(depth)
  check_width_multiplier(width_multiplier)
  c = scaled_width(_STAGE_WIDTHS[-1], width_multiplier)
  return c * _BOTTLENECK_EXPANSION if _ARCHS[depth][0] == "bottleneck" else c


def min_image_size(cifar_stem: bool) -> int:
  """Smallest input side (px) the encoder accepts: its total stride.

  Below it the last stages only see 1x1 maps made mostly of padding. The total
  stride is 8 for the CIFAR stem (three stride-2 stages) and 32 for the
  ImageNet stem (plus the stride-2 conv and the stride-2 max-pool).
  """
  return 8 if cifar_stem else 32


class _BlockBase(NormMixin, nn.Module):
  """Fields shared by both residual block kinds (SK/SE: see selective_kernel.py)."""
  features: int  # bottleneck width (bottleneck) or output width (basic)
  strides: int = 1
  use_projection: bool = False
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  fusion_barrier: bool = False  # CPU training speed-up: see fusion_barrier.py
  sk_ratio: float = 0.0  # > 0: SK 3x3 conv (bottleneck) and ResNet-D shortcut
  se_ratio: float = 0.0  # > 0: squeeze-excitation after the last BN

  def _shortcut(self, x: Array, out_features: int, train: bool) -> Array:
    if not self.use_projection:
      return x
    if self.sk_ratio > 0:  # ResNet-D: average pool carries the stride
      s = conv(avg_pool_2x2(x, self.strides), out_features, 1, 1, self.dtype, "proj_conv")
    else:
      s = conv(x, out_features, 1, self.strides, self.dtype, "proj_conv")
    return self._bn(s, train, "proj_bn")

  def _se(self, y: Array) -> Array:
    if self.se_ratio <= 0:
      return y
    return SqueezeExcite(self.features, self.se_ratio, dtype=self.dtype, name="se")(y)


class BasicBlock(_BlockBase):
  """3x3 conv-BN-ReLU, 3x3 conv-BN(gamma 0), + shortcut, ReLU.

  [B, H, W, Cin] -> [B, ceil(H/s), ceil(W/s), features].
  """

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    shortcut = self._shortcut(x, self.features, train)
    y = conv(x, self.features, 3, self.strides, self.dtype, "conv1")
    y = relu(self._bn(y, train, "bn1"), train, self.axis_name, self.fusion_barrier)
    y = conv(y, self.features, 3, 1, self.dtype, "conv2")
    y = self._se(self._bn(y, train, "bn2", zero_init=True))
    return relu(y + shortcut, train, self.axis_name, self.fusion_barrier)


class BottleneckBlock(_BlockBase):
  """1x1 conv, 3x3 conv (strided), 1x1 conv to 4x width (gamma 0), + shortcut, ReLU.

  [B, H, W, Cin] -> [B, ceil(H/s), ceil(W/s), 4 * features].
  """

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    out_features = _BOTTLENECK_EXPANSION * self.features
    shortcut = self._shortcut(x, out_features, train)
    y = conv(x, self.features, 1, 1, self.dtype, "conv1")
    y = relu(self._bn(y, train, "bn1"), train, self.axis_name, self.fusion_barrier)
    if self.sk_ratio > 0:
      y = SKConv(self.features, self.strides, self.sk_ratio, dtype=self.dtype,
                 bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                 axis_name=self.axis_name, fusion_barrier=self.fusion_barrier,
                 name="sk_conv2")(y, train)
    else:
      y = conv(y, self.features, 3, self.strides, self.dtype, "conv2")
      y = relu(self._bn(y, train, "bn2"), train, self.axis_name, self.fusion_barrier)
    y = conv(y, out_features, 1, 1, self.dtype, "conv3")
    y = self._se(self._bn(y, train, "bn3", zero_init=True))
    return relu(y + shortcut, train, self.axis_name, self.fusion_barrier)


class ResNet(nn.Module):
  """ResNet v1 encoder returning the globally average-pooled features h.

  Attributes:
    depth: one of 18, 34, 50, 101, 152, 200.
    width_multiplier: channel multiplier w > 0 (fractions allowed).
    cifar_stem: 3x3/1 conv stem without max-pool (images <= 32 px) instead of
      the 7x7/2 conv + 3x3/2 max-pool ImageNet stem.
    dtype: compute dtype; parameters and BN statistics stay float32.
    bn_momentum: running-average decay of BN statistics.
    bn_epsilon: BN variance epsilon.
    axis_name: mapped axis over which BN averages batch statistics in training
      (global BN under shard_map/pmap); None = per-call statistics.
    freeze_through: -1 = every layer trains; k in 0..4 = the stem (0) and block
      groups 1..k are frozen: even with train=True they run in inference mode (BN
      running averages, left unchanged) and pass no gradient back (the official
      fine_tune_after_block). `is_frozen` names their parameters.
    sk_ratio: > 0 (bottleneck depths only): selective-kernel 3x3 convs, ResNet-D
      shortcuts and (ImageNet stem) the ResNet-D stem; SimCLR v2 used 0.0625.
    se_ratio: > 0: squeeze-excitation in every block.
  """
  depth: int
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  fusion_barrier: bool = False  # CPU training speed-up: see fusion_barrier.py
  freeze_through: int = -1
  sk_ratio: float = 0.0
  se_ratio: float = 0.0

  def __post_init__(self):
    check_depth(self.depth)
    check_width_multiplier(self.width_multiplier)
    check_bn_args(self.bn_momentum, self.bn_epsilon)
    if self.freeze_through not in FREEZE_THROUGH:
      raise ValueError(f"freeze_through must be one of {FREEZE_THROUGH}, got "
                       f"{self.freeze_through!r}.")
    check_sk_se(self.depth, self.sk_ratio, self.se_ratio)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, train: bool, return_intermediates: bool = False):
    """Encodes images.

    Args:
      x: [B, H, W, C] images in [0, 1], H and W >= min_image_size(cifar_stem).
      train: batch statistics (and their running averages updated: pass
        mutable=['batch_stats']) if True, running averages otherwise.
      return_intermediates: also return the feature maps after the stem's last
        conv (before its BN), after the stem (after the max-pool for the ImageNet
        stem) and after each stage.

    Returns:
      h: [B, feature_dim(depth, width_multiplier)] float32; with
      return_intermediates, (h, {'stem_conv', 'stem', 'block1', ..., 'block4':
      [B, h, w, c] in the compute dtype}).
    """
    if x.ndim != 4:
      raise ValueError(f"ResNet expects images [B, H, W, C], got shape {x.shape}.")
    min_side = min_image_size(self.cifar_stem)
    if min(x.shape[1], x.shape[2]) < min_side:
      raise ValueError(
          f"Image size {x.shape[1]}x{x.shape[2]} is below the {min_side} px minimum "
          f"of the {'CIFAR' if self.cifar_stem else 'ImageNet'} stem.")
    kind, stage_blocks = _ARCHS[self.depth]
    block_cls = BasicBlock if kind == "basic" else BottleneckBlock
    width = lambda c: scaled_width(c, self.width_multiplier)
    bn = lambda y, name, train: nn.BatchNorm(
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
        axis_name=self.axis_name, name=name)(y)
    # Group 0 is the stem, 1-4 the block groups; frozen ones run in inference mode.
    trains = lambda group: train and group > self.freeze_through

    intermediates = {}
    if self.cifar_stem:
      y = conv(x, width(_STEM_WIDTH), 3, 1, self.dtype, "stem_conv")
      intermediates["stem_conv"] = y
      y = relu(bn(y, "stem_bn", trains(0)), trains(0), self.axis_name, self.fusion_barrier)
    else:
      if self.sk_ratio > 0:  # ResNet-D stem: 3x3/2 to 32w, 3x3 to 32w, 3x3 to 64w
        y = conv(x, width(_STEM_WIDTH // 2), 3, 2, self.dtype, "stem_conv_a")
        y = relu(bn(y, "stem_bn_a", trains(0)), trains(0), self.axis_name, self.fusion_barrier)
        y = conv(y, width(_STEM_WIDTH // 2), 3, 1, self.dtype, "stem_conv_b")
        y = relu(bn(y, "stem_bn_b", trains(0)), trains(0), self.axis_name, self.fusion_barrier)
        y = conv(y, width(_STEM_WIDTH), 3, 1, self.dtype, "stem_conv")
      else:
        y = conv(x, width(_STEM_WIDTH), 7, 2, self.dtype, "stem_conv")
      intermediates["stem_conv"] = y
      y = relu(bn(y, "stem_bn", trains(0)), trains(0), self.axis_name, self.fusion_barrier)
      # The official code max-pools with TF 'SAME' padding (not the fixed padding).
      y = nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")
    intermediates["stem"] = y

    for stage, (num_blocks, stage_width, stage_stride) in enumerate(
        zip(stage_blocks, _STAGE_WIDTHS, _STAGE_STRIDES), start=1):
      if stage - 1 == self.freeze_through:
        y = jax.lax.stop_gradient(y)
      for i in range(num_blocks):
        y = block_cls(
            features=width(stage_width), strides=stage_stride if i == 0 else 1,
            use_projection=i == 0, dtype=self.dtype, bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon, axis_name=self.axis_name, sk_ratio=self.sk_ratio,
            se_ratio=self.se_ratio, fusion_barrier=self.fusion_barrier,
            name=f"block{stage}_{i}")(y, trains(stage))
      intermediates[f"block{stage}"] = y

    if self.freeze_through == len(stage_blocks):
      y = jax.lax.stop_gradient(y)
    h = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    if return_intermediates:
      return h, intermediates
    return h
