"""Projection head g(.) of SimCLR, as the official code's "nonlinear"/"linear"/"none" modes."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from simclr_jax.choices import HEAD_MODES
from simclr_jax.models.resnet import check_bn_args

Array = Any
Dtype = Any

# The official LinearLayer initialises dense kernels with N(0, 0.01^2).
dense_kernel_init = nn.initializers.normal(stddev=0.01)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_head_args(mode: str, num_layers: int, out_dim: int) -> None:
  """Raises ValueError on an unknown mode, num_layers < 1 or out_dim < 1."""
  if mode not in HEAD_MODES:
    raise ValueError(f"Projection head mode must be one of {HEAD_MODES}, got {mode!r}.")
  if not _is_int(num_layers) or num_layers < 1:
    raise ValueError(f"Projection head num_layers must be an int >= 1, got {num_layers!r}.")
  if not _is_int(out_dim) or out_dim < 1:
    raise ValueError(f"Projection head out_dim must be an int >= 1, got {out_dim!r}.")


class ProjectionHead(nn.Module):
  """Maps h to z, the space where the contrastive loss is applied.

  "nonlinear": num_layers x (Dense without bias + BN); the middle layers keep the
  input width, their BN has a beta and is followed by ReLU; the last layer
  outputs out_dim and its BN has no beta and no ReLU. "linear": one Dense(out_dim)
  + BN without beta. "none": z = h.

  Submodules of layer j are named dense_j and bn_j.

  Attributes:
    mode: "nonlinear", "linear" or "none".
    num_layers: layers of the "nonlinear" head (2 = SimCLR v1, 3 = SimCLR v2);
      must be >= 1 in every mode, used by "nonlinear" only.
    out_dim: size of z (ignored by "none").
    dtype: compute dtype; parameters and BN statistics stay float32.
    bn_momentum, bn_epsilon, axis_name: as in ResNet.
    layers: run only the first `layers` layers (None: all) and return the last one's
      output; only those layers' parameters exist. Fine-tuning from a head layer
      (SimCLR v2) builds its network with this.
  """
  mode: str = "nonlinear"
  num_layers: int = 2
  out_dim: int = 128
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  layers: int | None = None

  def __post_init__(self):
    check_head_args(self.mode, self.num_layers, self.out_dim)
    check_bn_args(self.bn_momentum, self.bn_epsilon)
    if self.layers is not None and not (_is_int(self.layers)
                                        and 0 <= self.layers <= self.total_layers):
      raise ValueError(f"Projection head layers must be an int in [0, {self.total_layers}] "
                       f"(a {self.mode!r} head with num_layers={self.num_layers}), got "
                       f"{self.layers!r}.")
    super().__post_init__()

  @property
  def total_layers(self) -> int:
    """Layers of the whole head: 0 ("none"), 1 ("linear") or num_layers."""
    return {"none": 0, "linear": 1}.get(self.mode, self.num_layers)

  @nn.compact
  def __call__(self, h: Array, train: bool, return_hidden: bool = False):
    """Projects features.

    Args:
      h: [B, C] features.
      train: BN uses batch statistics (pass mutable=['batch_stats']) if True.
      return_hidden: also return the list [h, output of layer 1, ..., output of
        the last layer] (float32), e.g. to fine-tune from the first head layer as
        SimCLR v2 does.

    Returns:
      z: [B, out_dim] float32 ([B, C] for "none"; the output of layer `layers` when
        set); or (z, hiddens).
    """
    if h.ndim != 2:
      raise ValueError(f"ProjectionHead expects features [B, C], got shape {h.shape}.")
    hiddens = [h.astype(jnp.float32)]
    num_layers = self.total_layers
    y = h
    for j in range(num_layers if self.layers is None else self.layers):
      last = j == num_layers - 1
      y = nn.Dense(self.out_dim if last else y.shape[-1], use_bias=False, dtype=self.dtype,
                   param_dtype=jnp.float32, kernel_init=dense_kernel_init,
                   name=f"dense_{j}")(y)
      y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, use_bias=not last, dtype=self.dtype,
                       param_dtype=jnp.float32, axis_name=self.axis_name,
                       name=f"bn_{j}")(y)
      if not last:
        y = nn.relu(y)
      hiddens.append(y.astype(jnp.float32))
    z = hiddens[-1]
    if return_hidden:
      return z, hiddens
    return z
