"""Layer helpers shared by the ResNet encoder and its SK/SE variants (official padding)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from simclr_jax.models import fusion_barrier

Array = Any
Dtype = Any

conv_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def conv(x: Array, features: int, kernel_size: int, strides: int, dtype: Dtype,
         name: str, use_bias: bool = False) -> Array:
  """Conv with the official padding rule; call inside a compact method.

  Args:
    x: [B, H, W, Cin].
    features: output channels.
    kernel_size: square kernel side.
    strides: 1 (SAME padding) or > 1 (fixed symmetric padding, then VALID).
    dtype: compute dtype.
    name: submodule name.
    use_bias: add a bias (zero-initialised); the ResNet's convs have none.

  Returns:
    [B, ceil(H/strides), ceil(W/strides), features] in `dtype`.
  """
  if strides > 1:
    beg = (kernel_size - 1) // 2
    end = kernel_size - 1 - beg
    padding = ((beg, end), (beg, end))
  else:
    padding = "SAME"
  return nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides),
                 padding=padding, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=conv_kernel_init, name=name)(x)


def relu(x: Array, train: bool, axis_name: str | None, barrier: bool = False) -> Array:
  """ReLU of an activation that the next layer stores for its gradient.

  With `barrier`, in training it passes a fusion barrier (fusion_barrier.py: the same
  values, a faster step on the CPU backend); `axis_name` is the mapped axis the step
  runs under.
  """
  y = nn.relu(x)
  if barrier and train and axis_name is not None:
    y = fusion_barrier.fusion_barrier(y, axis_name)
  return y


class NormMixin:
  """BN with the module's dtype/momentum/epsilon/axis_name fields; gamma 0 on request."""

  def _bn(self, x: Array, train: bool, name: str, zero_init: bool = False) -> Array:
    return nn.BatchNorm(
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        axis_name=self.axis_name, name=name)(x)
