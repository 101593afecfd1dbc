"""Selective-kernel (SK) and squeeze-excitation (SE) parts of the SimCLR v2 ResNet.

As the official TF1 code (resnet.py, `sk_ratio` / `se_ratio` flags) builds them:
  * SK conv (Li et al. 2019) in place of a bottleneck's 3x3 conv: one 3x3 conv to 2x
    the width + BN + ReLU, split into two streams; their sum is globally pooled, a 1x1
    conv to max(int(width * sk_ratio), 32) + BN + ReLU and a 1x1 conv to 2x the width
    give per-channel logits of the two streams; the output is their softmax-weighted sum.
  * With SK, the ResNet-D stem (He et al. 2019: three 3x3 convs to 32w, 32w, 64w, the
    first with stride 2, BN-ReLU between) and ResNet-D projection shortcut (2x2 average
    pool with the block's stride, then a stride-1 1x1 conv).
  * SE (Hu et al. 2018) after a block's last BN: global pool, 1x1 conv (with bias) to
    max(1, int(width * se_ratio)), ReLU, 1x1 conv (with bias) back, sigmoid gate.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models.layers import NormMixin, conv, relu

Array = Any
Dtype = Any

SK_MIN_DIM = 32  # the official sk_conv2d's min_dim


class SKConv(NormMixin, nn.Module):
  """Selective-kernel 3x3 conv: [B, H, W, Cin] -> [B, ceil(H/s), ceil(W/s), features]."""
  features: int
  strides: int
  sk_ratio: float
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  fusion_barrier: bool = False  # CPU training speed-up: see fusion_barrier.py

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    y = conv(x, 2 * self.features, 3, self.strides, self.dtype, "conv")
    y = relu(self._bn(y, train, "bn"), train, self.axis_name, self.fusion_barrier)
    streams = jnp.stack(jnp.split(y, 2, axis=-1))  # [2, B, H, W, features]
    pooled = jnp.mean(jnp.sum(streams, axis=0), axis=(1, 2), keepdims=True)
    mid = max(int(self.features * self.sk_ratio), SK_MIN_DIM)
    g = conv(pooled, mid, 1, 1, self.dtype, "fc_conv")
    g = nn.relu(self._bn(g, train, "fc_bn"))
    mixing = conv(g, 2 * self.features, 1, 1, self.dtype, "mix_conv")
    mixing = jax.nn.softmax(jnp.stack(jnp.split(mixing, 2, axis=-1)), axis=0)
    return jnp.sum(streams * mixing, axis=0)


class SqueezeExcite(nn.Module):
  """x * sigmoid(expand(relu(reduce(mean_hw(x))))); `features` sets the reduced width."""
  features: int
  se_ratio: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = conv(s, max(1, int(self.features * self.se_ratio)), 1, 1, self.dtype, "reduce",
             use_bias=True)
    s = conv(nn.relu(s), x.shape[-1], 1, 1, self.dtype, "expand", use_bias=True)
    return jax.nn.sigmoid(s) * x


def avg_pool_2x2(x: Array, strides: int) -> Array:
  """The ResNet-D shortcut's pool: stride > 1 pads 0 before / 1 after with zeros (they
  count in the mean) then pools VALID; stride 1 pools TF-'SAME' (padding not counted)."""
  if strides > 1:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.avg_pool(x, (2, 2), strides=(strides, strides), padding="VALID")
  return nn.avg_pool(x, (2, 2), strides=(1, 1), padding=((0, 1), (0, 1)),
                     count_include_pad=False)
