"""SimCLR network: encoder f, projection head g and the optional online linear probe."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax.choices import DTYPES
from simclr_jax.models.heads import ProjectionHead, check_head_args, dense_kernel_init
from simclr_jax.models.resnet import (
    ResNet, check_bn_args, check_depth, check_width_multiplier)

Array = Any
Dtype = Any

_DTYPES = dict(zip(DTYPES, (jnp.float32, jnp.bfloat16)))


class SimCLRModel(nn.Module):
  """x -> h = encoder(x), z = head(h), logits = classifier(stop_gradient(hidden)).

  Submodules: 'encoder' (ResNet), 'head' (ProjectionHead) and, when
  num_classes > 0, 'classifier' (Dense with bias, official N(0, 0.01^2) kernel
  init): the online linear probe, fed stop_gradient of h or of a projection-head
  layer's output, so that it never changes the encoder's gradients.

  Attributes: see ResNet and ProjectionHead; proj_dim is the head's out_dim,
  num_classes the probe's output size (0 = no probe), probe_layer the probe's input:
  0 = h, j >= 1 = the output of head layer j (the official ft_proj_selector).
  """
  depth: int
  width_multiplier: float = 1.0
  cifar_stem: bool = False
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None
  fusion_barrier: bool = False  # CPU training speed-up: see fusion_barrier.py
  head_mode: str = "nonlinear"
  head_num_layers: int = 2
  proj_dim: int = 128
  num_classes: int = 0
  probe_layer: int = 0
  sk_ratio: float = 0.0
  se_ratio: float = 0.0

  def __post_init__(self):
    # Submodules are built lazily in setup(); check their fields now for an early error.
    check_depth(self.depth)
    check_width_multiplier(self.width_multiplier)
    check_bn_args(self.bn_momentum, self.bn_epsilon)
    check_head_args(self.head_mode, self.head_num_layers, self.proj_dim)
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
        or self.num_classes < 0:
      raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}.")
    head_layers = {"none": 0, "linear": 1}.get(self.head_mode, self.head_num_layers)
    if isinstance(self.probe_layer, bool) or self.probe_layer not in range(head_layers + 1):
      raise ValueError(f"probe_layer must be an int in [0, {head_layers}] (the head's "
                       f"layers), got {self.probe_layer!r}.")
    super().__post_init__()

  def setup(self):
    self.encoder = ResNet(
        depth=self.depth, width_multiplier=self.width_multiplier,
        cifar_stem=self.cifar_stem, dtype=self.dtype, bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon, axis_name=self.axis_name, sk_ratio=self.sk_ratio,
        se_ratio=self.se_ratio, fusion_barrier=self.fusion_barrier)
    self.head = ProjectionHead(
        mode=self.head_mode, num_layers=self.head_num_layers, out_dim=self.proj_dim,
        dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
        axis_name=self.axis_name)
    if self.num_classes > 0:
      self.classifier = nn.Dense(self.num_classes, use_bias=True, dtype=jnp.float32,
                                 param_dtype=jnp.float32, kernel_init=dense_kernel_init)

  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    """Runs the whole network.

    Args:
      x: [B, H, W, 3] images in [0, 1].
      train: batch statistics for every BN (pass mutable=['batch_stats']).

    Returns:
      {'h': [B, C] float32, 'z': [B, proj_dim] float32 and, when num_classes > 0,
       'logits': [B, num_classes] float32}.
    """
    h = self.encoder(x, train)
    z, hiddens = self.head(h, train, return_hidden=True)
    out = {"h": h, "z": z}
    if self.num_classes > 0:
      out["logits"] = self.classifier(jax.lax.stop_gradient(hiddens[self.probe_layer]))
    return out

  def endpoints(self, x: Array) -> dict[str, Array]:
    """Inference outputs (float32), named as the official TF-Hub module's signature.

    {'h', 'z', 'initial_conv' (the stem's last conv, before BN), 'initial_max_pool'
    (the stem's output), 'block_group1'..'block_group4', 'final_avg_pool' (= h),
    'proj_head_output' (= z) and, when num_classes > 0, 'logits_sup'}.
    """
    h, inter = self.encoder(x, False, return_intermediates=True)
    z, hiddens = self.head(h, False, return_hidden=True)
    out = {"h": h, "z": z, "initial_conv": inter["stem_conv"],
           "initial_max_pool": inter["stem"],
           **{f"block_group{i}": inter[f"block{i}"] for i in range(1, 5)},
           "final_avg_pool": h, "proj_head_output": z}
    if self.num_classes > 0:
      out["logits_sup"] = self.classifier(hiddens[self.probe_layer])
    return {k: v.astype(jnp.float32) for k, v in out.items()}

  def encode(self, x: Array, train: bool) -> Array:
    """h: [B, C] float32 only (use with model.apply(..., method='encode'))."""
    return self.encoder(x, train)

  def hidden(self, x: Array, train: bool, layer: int) -> Array:
    """[B, C'] float32: h (layer 0) or the output of projection-head layer `layer`."""
    h = self.encoder(x, train)
    return h if layer == 0 else self.head(h, train, return_hidden=True)[1][layer]


def parse_dtype(name: str) -> Dtype:
  """Maps a config dtype string ("float32" | "bfloat16") to a jnp dtype."""
  if name not in _DTYPES:
    raise ValueError(f"model dtype must be one of {tuple(_DTYPES)}, got {name!r}.")
  return _DTYPES[name]


def create_model(model_config: ml_collections.ConfigDict, num_classes: int = 0,
                 axis_name: str | None = None,
                 fusion_barrier: bool = False) -> SimCLRModel:
  """Builds the SimCLR network from config.model (see configs/base.py).

  config.model.global_bn and online_probe are the caller's to interpret: pass
  axis_name (global BN) and num_classes (online probe) accordingly; fusion_barrier
  (fusion_barrier.py) is for training on the CPU backend.
  """
  return SimCLRModel(
      depth=model_config.depth,
      width_multiplier=model_config.width_multiplier,
      cifar_stem=model_config.cifar_stem,
      dtype=parse_dtype(model_config.dtype),
      bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon,
      axis_name=axis_name,
      fusion_barrier=fusion_barrier,
      head_mode=model_config.head_mode,
      head_num_layers=model_config.head_num_layers,
      proj_dim=model_config.proj_dim,
      num_classes=num_classes,
      # Absent from the configs of checkpoints written before the field existed.
      probe_layer=model_config.get("probe_from_projection_layer", 0),
      sk_ratio=model_config.get("sk_ratio", 0.0),
      se_ratio=model_config.get("se_ratio", 0.0))
