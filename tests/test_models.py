"""Tests of simclr_jax.models: architecture, numerics against NumPy, global BN, dtypes."""

import json
import math
import os
import subprocess
import sys
import textwrap


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base as base_config
from simclr_jax.models import (
    ProjectionHead, ResNet, SimCLRModel, create_model, feature_dim, min_image_size)
from simclr_jax.models import fusion_barrier as fb
from simclr_jax.models.resnet import BasicBlock, BottleneckBlock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 1e-5

# ---------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------

# depth -> (bottleneck?, blocks per stage), from He et al. 2016, Table 1.
_ARCH = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
         101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3)),
         200: (True, (3, 24, 36, 3))}


def expected_param_count(depth: int, w: float, cifar_stem: bool) -> int:
  """Conv kernels + BN (gamma, beta) of the official TF ResNet, counted by hand."""
  ch = lambda c: max(1, int(round(c * w)))
  bottleneck, blocks = _ARCH[depth]
  k = 3 if cifar_stem else 7
  cin = ch(64)
  n = k * k * 3 * cin + 2 * cin
  for stage, (nb, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
    f = ch(width)
    cout = 4 * f if bottleneck else f
    for b in range(nb):
      if b == 0:  # the official code projects in the first block of every stage
        n += cin * cout + 2 * cout
      if bottleneck:
        n += cin * f + 2 * f + 9 * f * f + 2 * f + f * cout + 2 * cout
      else:
        n += 9 * cin * f + 2 * f + 9 * f * f + 2 * f
      cin = cout
  return n


def np_conv(x, w, stride, pad):
  """x [B,H,W,Ci], w [k,k,Ci,Co], explicit (before, after) padding on H and W."""
  k = w.shape[0]
  xp = np.pad(x, ((0, 0), pad, pad, (0, 0)))
  oh = (xp.shape[1] - k) // stride + 1
  ow = (xp.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[3]), np.float64)
  for i in range(k):
    for j in range(k):
      patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      out += patch @ w[i, j]
  return out


def np_conv_official(x, w, stride):
  """TF official rule: SAME for stride 1 (odd k), fixed (k-1)//2 padding otherwise."""
  k = w.shape[0]
  beg = (k - 1) // 2
  return np_conv(x, w, stride, (beg, k - 1 - beg))


def np_max_pool_same(x, k=3, s=2):
  """TF 'SAME' max-pool: out = ceil(n/s), padding split with the extra at the end."""
  def pads(n):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return (total // 2, total - total // 2), out
  (ph, oh), (pw, ow) = pads(x.shape[1]), pads(x.shape[2])
  xp = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf)
  out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
  for i in range(k):
    for j in range(k):
      out = np.maximum(out, xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s])
  return out


def np_bn(x, p, s):
  """Inference-mode BN from flax param/stat dicts."""
  y = (x - s["mean"]) / np.sqrt(s["var"] + EPS)
  if "scale" in p:
    y = y * p["scale"]
  if "bias" in p:
    y = y + p["bias"]
  return y


def relu(x):
  return np.maximum(x, 0)


def random_variables(model, x, seed, **init_kwargs):
  """Variables of `model` filled from NumPy, without compiling JAX's initialisers.

  Kernels ~ N(0, 1/fan_in); BN scales, biases and running statistics random so
  that every path of the network is non-trivial.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False,
                                             **init_kwargs))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(0, 1 / math.sqrt(np.prod(shape[:-1])), shape)
    elif name == "scale":
      value = rng.uniform(0.5, 1.5, shape)
    elif name in ("bias", "mean"):
      value = rng.normal(0, 0.2, shape)
    elif name == "var":
      value = rng.uniform(0.5, 2.0, shape)
    else:
      raise AssertionError(f"unexpected variable {path}")
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def init_except_kernels(model, x, seed=0, **init_kwargs):
  """model.init's real values for everything but the kernels (None there).

  XLA drops the unused kernel initialisers, whose compilation dominates init's
  cost on CPU (about 1 s per kernel on this machine).
  """
  def f(x):
    v = model.init(jax.random.key(seed), x, train=False, **init_kwargs)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: None if p[-1].key == "kernel" else a, v)
  return jax.jit(f)(x)


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, shape), jnp.float32)


def abstract_init(model, side=32):
  """(h, variables) shapes without computing anything."""
  return jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, side, side, 3)), train=False))


# ---------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("w, paper_count", [(1.0, 23.5e6), (2.0, 94e6)])
def test_resnet50_parameter_count(w, paper_count):
  h, variables = abstract_init(ResNet(50, w))
  count = n_params(variables["params"])
  assert abs(count - paper_count) / paper_count < 0.01, count
  assert count == expected_param_count(50, w, cifar_stem=False)
  assert h.shape == (2, int(2048 * w)) and h.dtype == jnp.float32


@pytest.mark.parametrize("depth, w, table_millions", [(50, 1, 35), (50, 2, 140), (101, 2, 257),
                                                      (152, 3, 795)])
def test_sk_resnet_parameter_counts_match_the_simclr_v2_table(depth, w, table_millions):
  """SimCLR v2 Table 1 / official README: encoder parameters of the SK (0.0625) models."""
  h, variables = abstract_init(ResNet(depth, w, sk_ratio=0.0625), side=64)
  assert round(n_params(variables["params"]) / 1e6) == table_millions
  assert h.shape == (2, 2048 * w)
  plain = n_params(abstract_init(ResNet(depth, w), side=64)[1]["params"])
  assert plain < 0.75 * n_params(variables["params"])  # SK adds > 1/3


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152, 200])
def test_feature_dim_and_param_count_per_depth(depth):
  w = 0.25
  h, variables = abstract_init(ResNet(depth, w, cifar_stem=depth == 18))
  expected_c = (2048 if _ARCH[depth][0] else 512) * w
  assert h.shape == (2, expected_c) == (2, feature_dim(depth, w))
  assert n_params(variables["params"]) == expected_param_count(depth, w, depth == 18)
  # BN statistics live apart from the parameters, in float32.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_feature_dim_and_min_image_size():
  assert feature_dim(18, 1.0) == 512 and feature_dim(34, 2.0) == 1024
  assert feature_dim(50, 1.0) == 2048 and feature_dim(152, 4.0) == 8192
  assert feature_dim(18, 0.001) == 1  # widths never reach 0
  assert min_image_size(True) == 8 and min_image_size(False) == 32


# ---------------------------------------------------------------------------------
# Numerics against NumPy
# ---------------------------------------------------------------------------------

def jit_apply(model, variables, x, **kwargs):
  """model.apply compiled as one program (eager flax compiles op by op: slower)."""
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


@pytest.mark.parametrize("cifar_stem, hw", [(False, (34, 40)), (True, (9, 8))])
def test_stem_matches_numpy(cifar_stem, hw):
  model = ResNet(18, 0.125, cifar_stem=cifar_stem)
  x = images((2, *hw, 3))
  variables = random_variables(model, x, seed=1)
  p, s = variables["params"], variables["batch_stats"]
  # Returning the stem alone lets XLA drop (and skip compiling) the rest.
  stem = jax.jit(lambda v, x: model.apply(v, x, train=False, return_intermediates=True)[1][
      "stem"])(variables, x)
  y = np_conv_official(np.asarray(x, np.float64), np.asarray(p["stem_conv"]["kernel"]),
                       1 if cifar_stem else 2)
  y = relu(np_bn(y, p["stem_bn"], s["stem_bn"]))
  if not cifar_stem:
    y = np_max_pool_same(y)
  np.testing.assert_allclose(stem, y, rtol=1e-4, atol=1e-5)


def test_fixed_padding_differs_from_same_on_even_inputs():
  # Guards the reference: on an even input a 7x7/2 conv with TF SAME padding
  # (2 before, 3 after) gives other values than the fixed (3, 3) padding.
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(1, 10, 10, 2)), rng.normal(size=(7, 7, 2, 3))
  assert not np.allclose(np_conv(x, w, 2, (2, 3)), np_conv_official(x, w, 2))


def _np_block(x, p, s, bottleneck, stride):
  if bottleneck:
    y = relu(np_bn(np_conv_official(x, p["conv1"]["kernel"], 1), p["bn1"], s["bn1"]))
    y = relu(np_bn(np_conv_official(y, p["conv2"]["kernel"], stride), p["bn2"], s["bn2"]))
    y = np_bn(np_conv_official(y, p["conv3"]["kernel"], 1), p["bn3"], s["bn3"])
  else:
    y = relu(np_bn(np_conv_official(x, p["conv1"]["kernel"], stride), p["bn1"], s["bn1"]))
    y = np_bn(np_conv_official(y, p["conv2"]["kernel"], 1), p["bn2"], s["bn2"])
  if "proj_conv" in p:
    sc = np_bn(np_conv_official(x, p["proj_conv"]["kernel"], stride),
               p["proj_bn"], s["proj_bn"])
  else:
    sc = x
  return relu(y + sc)


@pytest.mark.parametrize("block_cls, stride, proj", [
    (BasicBlock, 2, True), (BasicBlock, 1, False),
    (BottleneckBlock, 2, True), (BottleneckBlock, 1, False)])
def test_blocks_match_numpy(block_cls, stride, proj):
  bottleneck = block_cls is BottleneckBlock
  features = 3
  cin = 5 if proj else (4 * features if bottleneck else features)
  block = block_cls(features=features, strides=stride, use_projection=proj)
  x = images((2, 7, 6, cin), seed=2) - 0.5
  variables = random_variables(block, x, seed=2)
  out = jit_apply(block, variables, x, train=False)
  ref = _np_block(np.asarray(x, np.float64), variables["params"],
                  variables["batch_stats"], bottleneck, stride)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block_cls", [BasicBlock, BottleneckBlock])
def test_block_is_identity_at_init(block_cls):
  # The last BN's gamma = 0 makes the residual branch vanish: out = relu(x).
  features = 4
  cin = 4 * features if block_cls is BottleneckBlock else features
  block = block_cls(features=features)
  x = images((4, 6, 6, cin), seed=3) - 0.5

  initial = init_except_kernels(block, x)
  kernels = random_variables(block, x, seed=3)
  variables = jax.tree.map(lambda a, k: k if a is None else a, initial, kernels,
                           is_leaf=lambda a: a is None)
  outs = jax.jit(lambda v, x: [block.apply(v, x, train=t, mutable=["batch_stats"])[0]
                               for t in (False, True)])(variables, x)
  for out in outs:
    np.testing.assert_array_equal(out, np.maximum(np.asarray(x), 0))


# ---------------------------------------------------------------------------------
# Whole encoder
# ---------------------------------------------------------------------------------

def _ceil_half(n, times):
  for _ in range(times):
    n = -(-n // 2)
  return n


@pytest.mark.parametrize("depth, cifar_stem, hw", [
    (18, True, (8, 8)), (18, True, (13, 10)), (50, False, (32, 32)),
    (50, False, (45, 33)), (34, False, (64, 48))])
def test_encoder_output_and_intermediate_shapes(depth, cifar_stem, hw):
  w = 0.125
  model = ResNet(depth, w, cifar_stem=cifar_stem)
  x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  (h, inter), updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, return_intermediates=True,
                               mutable=["batch_stats"]), variables, x)
  assert h.shape == (2, feature_dim(depth, w)) and h.dtype == jnp.float32
  assert jax.tree.map(lambda a: a.shape, updates["batch_stats"]) == jax.tree.map(
      lambda a: a.shape, variables["batch_stats"])
  expansion = 4 if depth >= 50 else 1
  stem_down = 0 if cifar_stem else 2
  assert inter["stem"].shape == (2, _ceil_half(hw[0], stem_down),
                                 _ceil_half(hw[1], stem_down), 8)
  for stage in range(1, 5):
    down = stem_down + stage - 1
    c = int(64 * 2 ** (stage - 1) * w) * expansion
    assert inter[f"block{stage}"].shape == (
        2, _ceil_half(hw[0], down), _ceil_half(hw[1], down), c)


def test_encoder_forward_and_running_statistics():
  model = ResNet(18, 0.125, cifar_stem=True)
  x = images((4, 8, 8, 3), seed=4)
  variables = random_variables(model, x, seed=4)
  ((h, inter), updates), h_eval = jax.jit(lambda v, x: (
      model.apply(v, x, train=True, return_intermediates=True, mutable=["batch_stats"]),
      model.apply(v, x, train=False)))(variables, x)
  np.testing.assert_allclose(h, np.asarray(inter["block4"]).mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  # Training mode: running mean <- 0.9 running mean + 0.1 batch mean (NumPy stem).
  p, s = variables["params"], variables["batch_stats"]
  conv = np_conv_official(np.asarray(x, np.float64), np.asarray(p["stem_conv"]["kernel"]), 1)
  np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["mean"],
                             0.9 * s["stem_bn"]["mean"] + 0.1 * conv.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["stem_bn"]["var"],
                             0.9 * s["stem_bn"]["var"] + 0.1 * conv.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  assert not np.allclose(h, h_eval)  # eval mode uses the running statistics


@pytest.mark.parametrize("depth, cifar_stem, side", [(18, True, 8), (50, False, 32)])
def test_encoder_init(depth, cifar_stem, side):
  model = ResNet(depth, 0.125, cifar_stem=cifar_stem)
  x = jnp.zeros((1, side, side, 3))
  variables = init_except_kernels(model, x, seed=5)
  params = variables["params"]
  # Zero-init: the last BN of every block, and only it, starts with gamma = 0.
  last_bn = "bn3" if depth >= 50 else "bn2"
  blocks = [k for k in params if k.startswith("block")]
  assert len(blocks) == sum(_ARCH[depth][1])
  for name in blocks:
    for bn, p in params[name].items():
      if "bn" in bn:
        np.testing.assert_array_equal(p["scale"], 0.0 if bn == last_bn else 1.0,
                                      err_msg=f"{name}/{bn}")
        np.testing.assert_array_equal(p["bias"], 0.0)
  np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
  # No conv has a bias; kernels ~ truncated N(0, 1/fan_in) (tf.keras VarianceScaling()).
  for path, _ in jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda a: a is None):
    keys = [k.key for k in path]
    assert not (any("conv" in k for k in keys) and keys[-1] == "bias"), keys
  kernel = np.asarray(jax.jit(  # one kernel only: one initialiser to compile
      lambda x: model.init(jax.random.key(5), x, train=False)[
          "params"]["block4_1"]["conv2"]["kernel"])(x))  # 3x3x64x64
  std = math.sqrt(1.0 / np.prod(kernel.shape[:-1]))
  assert abs(kernel.std() / std - 1) < 0.03, kernel.std() / std
  assert np.abs(kernel).max() <= 2 * std / 0.87962566 + 1e-6  # truncated at 2 sigma
  # Running statistics start at mean 0, variance 1.
  for path, stat in jax.tree_util.tree_leaves_with_path(variables["batch_stats"]):
    np.testing.assert_array_equal(stat, 0.0 if path[-1].key == "mean" else 1.0)


# ---------------------------------------------------------------------------------
# Projection head
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [2, 3])
def test_nonlinear_head_structure(num_layers):
  head = ProjectionHead("nonlinear", num_layers=num_layers, out_dim=6)
  h = images((5, 32), seed=6)
  p = jax.eval_shape(lambda: head.init(jax.random.key(6), h, train=False))["params"]
  assert sorted(p) == sorted([f"dense_{j}" for j in range(num_layers)]
                             + [f"bn_{j}" for j in range(num_layers)])
  for j in range(num_layers):
    last = j == num_layers - 1
    assert set(p[f"dense_{j}"]) == {"kernel"}  # no Dense bias
    assert p[f"dense_{j}"]["kernel"].shape == (32, 6 if last else 32)
    assert set(p[f"bn_{j}"]) == ({"scale"} if last else {"scale", "bias"})
  kernel = jax.jit(lambda h: head.init(jax.random.key(6), h, train=False)[
      "params"]["dense_0"]["kernel"])(h)
  assert abs(float(np.std(kernel)) - 0.01) < 0.001  # N(0, 0.01^2)
  assert abs(float(np.mean(kernel))) < 0.001

  variables = random_variables(head, h, seed=6)
  p = variables["params"]
  (z, hiddens), _ = jit_apply(head, variables, h, train=True, return_hidden=True,
                              mutable=["batch_stats"])
  # NumPy reference, training-mode BN (biased batch variance).
  def bn_train(y, bp):
    y = (y - y.mean(0)) / np.sqrt(y.var(0) + EPS) * bp["scale"]
    return y + bp["bias"] if "bias" in bp else y
  y = np.asarray(h, np.float64)
  ref = [y]
  for j in range(num_layers):
    y = bn_train(y @ np.asarray(p[f"dense_{j}"]["kernel"]), p[f"bn_{j}"])
    if j < num_layers - 1:
      y = relu(y)
    ref.append(y)
  assert len(hiddens) == num_layers + 1 and z.shape == (5, 6) and z.dtype == jnp.float32
  for got, want in zip(hiddens, ref):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(z, hiddens[-1])


def test_linear_and_none_heads():
  h = images((4, 8), seed=7)
  linear = ProjectionHead("linear", out_dim=3)
  variables = jax.eval_shape(lambda: linear.init(jax.random.key(7), h, train=False))
  p = variables["params"]
  assert set(p) == {"dense_0", "bn_0"} and set(p["bn_0"]) == {"scale"}
  assert set(p["dense_0"]) == {"kernel"} and p["dense_0"]["kernel"].shape == (8, 3)
  variables = random_variables(linear, h, seed=7)
  z = jit_apply(linear, variables, h, train=False)
  p, s = variables["params"], variables["batch_stats"]
  np.testing.assert_allclose(
      z, np_bn(np.asarray(h, np.float64) @ p["dense_0"]["kernel"], p["bn_0"], s["bn_0"]),
      rtol=1e-4, atol=1e-5)

  none = ProjectionHead("none")
  variables = none.init(jax.random.key(7), h, train=False)
  assert not jax.tree.leaves(variables)
  z, hiddens = none.apply(variables, h, train=False, return_hidden=True)
  np.testing.assert_array_equal(z, h)
  assert len(hiddens) == 1


# ---------------------------------------------------------------------------------
# SimCLRModel
# ---------------------------------------------------------------------------------

def _tiny_model(**kw):
  args = dict(depth=18, width_multiplier=0.125, cifar_stem=True, proj_dim=8)
  args.update(kw)
  return SimCLRModel(**args)


def _nt_xent(z, tau=0.5):
  z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
  n = z.shape[0] // 2
  logits = z @ z.T / tau - 1e9 * jnp.eye(2 * n)
  labels = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_online_classifier_does_not_change_encoder_gradients():
  model = _tiny_model(num_classes=5)
  x = images((8, 8, 8, 3), seed=8)
  labels = jnp.arange(8) % 5
  variables = random_variables(model, x, seed=8)
  params, stats = variables["params"], variables["batch_stats"]
  assert set(params) == {"encoder", "head", "classifier"}
  assert set(params["classifier"]) == {"kernel", "bias"}

  ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def loss(params, probe):
    out, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    return _nt_xent(out["z"]) + (ce(out["logits"]) if probe else 0.0), out["h"]

  def probe_loss_of_h(h):  # control: the probe's loss fed h without stop_gradient
    c = params["classifier"]
    return ce(h @ c["kernel"] + c["bias"])

  # One program for both gradients: a single (slow) CPU compilation.
  (g_plain, _), (g_probe, h) = jax.jit(lambda p: [
      jax.grad(loss, has_aux=True)(p, probe) for probe in (False, True)])(params)
  for part in ("encoder", "head"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                 g_plain[part], g_probe[part])
  assert max(float(np.abs(a).max()) for a in jax.tree.leaves(g_plain["encoder"])) > 1e-4
  assert np.abs(g_probe["classifier"]["kernel"]).max() > 0
  # Without stop_gradient the probe's loss would push on h, hence on the encoder.
  assert np.abs(jax.grad(probe_loss_of_h)(h)).max() > 1e-4


def test_encode_method_and_outputs():
  model = _tiny_model(num_classes=3)
  x = images((4, 8, 8, 3), seed=9)
  variables = random_variables(model, x, seed=9)
  out, h = jax.jit(lambda v, x: (model.apply(v, x, train=False),
                                 model.apply(v, x, train=False, method="encode")))(
                                     variables, x)
  assert set(out) == {"h", "z", "logits"}
  assert out["h"].shape == (4, 64) and out["z"].shape == (4, 8)
  assert out["logits"].shape == (4, 3)
  assert all(v.dtype == jnp.float32 for v in out.values())
  np.testing.assert_array_equal(h, out["h"])
  c = variables["params"]["classifier"]
  np.testing.assert_allclose(out["logits"], np.asarray(h) @ c["kernel"] + c["bias"],
                             rtol=1e-5, atol=1e-6)
  no_probe = _tiny_model()
  v = jax.eval_shape(lambda: no_probe.init(jax.random.key(9), x, train=False))
  assert set(v["params"]) == {"encoder", "head"}
  out = jax.eval_shape(lambda v: no_probe.apply(v, x, train=False), v)
  assert set(out) == {"h", "z"}


def test_create_model_from_base_config():
  config = base_config.get_config()
  model = create_model(config.model, num_classes=10, axis_name="batch")
  m = config.model
  assert (model.depth, model.width_multiplier, model.cifar_stem) == (
      m.depth, m.width_multiplier, m.cifar_stem)
  assert (model.bn_momentum, model.bn_epsilon) == (0.9, 1e-5)
  assert (model.head_mode, model.head_num_layers, model.proj_dim) == (
      m.head_mode, m.head_num_layers, m.proj_dim)
  assert model.num_classes == 10 and model.axis_name == "batch"
  assert model.dtype == jnp.float32
  m.dtype = "bfloat16"
  assert create_model(m).dtype == jnp.bfloat16
  m.dtype = "float16"
  with pytest.raises(ValueError, match="float16"):
    create_model(m)


def _primitive_input_dtypes(jaxpr, names):
  """Input dtypes of each equation named in `names`, sub-jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in names:
      found.append({v.aval.dtype for v in eqn.invars})
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          found += _primitive_input_dtypes(sub.jaxpr, names)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          found += _primitive_input_dtypes(sub, names)
  return found


def test_bfloat16_compute_float32_params_and_outputs():
  x = images((16, 16, 16, 3), seed=10)
  m32 = _tiny_model(width_multiplier=0.25)
  m16 = _tiny_model(width_multiplier=0.25, dtype=jnp.bfloat16)
  v16 = jax.eval_shape(lambda: m16.init(jax.random.key(10), x, train=False))
  variables = random_variables(m32, x, seed=10)
  # Same variables, all float32.
  assert jax.tree.map(lambda a: (a.shape, a.dtype), v16) == jax.tree.map(
      lambda a: (a.shape, a.dtype), variables)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v16))
  _, inter16 = jax.eval_shape(lambda: m16.apply(
      variables, x, method=lambda m, x: m.encoder(x, False, return_intermediates=True)))
  assert inter16["block4"].dtype == jnp.bfloat16
  # Every convolution and matmul really runs in bf16.
  ops = _primitive_input_dtypes(
      jax.make_jaxpr(lambda v, x: m16.apply(v, x, train=False))(variables, x).jaxpr,
      ("conv_general_dilated", "dot_general"))
  # ResNet-18: stem + 8 blocks x 2 + 4 projections = 21 convs; 2 head layers.
  assert len(ops) == 21 + 2 and all(d == {jnp.dtype(jnp.bfloat16)} for d in ops), ops

  def run(model):
    return jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
  (o32, s32), (o16, s16) = run(m32), run(m16)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(s16))
  for key, tol in (("h", 0.05), ("z", 0.1)):  # measured: 0.019 and 0.045
    assert o16[key].dtype == jnp.float32
    rel = np.linalg.norm(o16[key] - o32[key]) / np.linalg.norm(o32[key])
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); ~20 layers of
    # rounding add up to a few percent, more in z whose BN divides by the small
    # spread of a 16-image batch.
    assert 0 < rel < tol, (key, rel)
  stat_rel = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-6))
                 for a, b in zip(jax.tree.leaves(s16), jax.tree.leaves(s32)))
  assert stat_rel < 0.05, stat_rel


# ---------------------------------------------------------------------------------
# Global BN under shard_map (8 CPU devices, subprocess)
# ---------------------------------------------------------------------------------

_SHARD_MAP_SCRIPT = textwrap.dedent("""
    import json
    from simclr_jax import platform
    platform.configure_xla_flags()
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from simclr_jax.models import SimCLRModel

    assert jax.device_count() == 8, jax.devices()
    kw = dict(depth=18, width_multiplier=0.125, cifar_stem=True, head_num_layers=3,
              proj_dim=8)
    single = SimCLRModel(**kw)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 3)), jnp.float32)
    # Random variables from NumPy (compiling JAX's initialisers is slow on CPU);
    # non-zero gammas everywhere so that every BN shapes the outputs.
    shapes = jax.eval_shape(lambda: single.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray(
            rng.uniform(0.5, 1.5, s.shape) if p[-1].key in ("scale", "var")
            else rng.normal(0, 0.3, s.shape), jnp.float32), shapes)
    out, upd = jax.jit(lambda v, x: single.apply(v, x, train=True,
                                                 mutable=["batch_stats"]))(variables, x)

    mesh = jax.make_mesh((8,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    def run(axis_name):
      model = SimCLRModel(axis_name=axis_name, **kw)
      def f(v, xs):
        o, u = model.apply(v, xs, train=True, mutable=["batch_stats"])
        return o["h"], o["z"], u["batch_stats"]
      stats_spec = P() if axis_name else P("batch")
      g = jax.shard_map(f, mesh=mesh, in_specs=(P(), P("batch")),
                        out_specs=(P("batch"), P("batch"), stats_spec),
                        check_vma=axis_name is not None)
      return jax.jit(g)(variables, x)

    def maxdiff(a, b):  # largest error relative to each array's largest value
      return max(float(np.abs(np.asarray(p) - np.asarray(q)).max() / np.abs(q).max())
                 for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    h, z, stats = run("batch")
    h_local, z_local, _ = run(None)
    print("RESULT", json.dumps(dict(
        h=maxdiff(h, out["h"]), z=maxdiff(z, out["z"]),
        stats=maxdiff(stats, upd["batch_stats"]),
        z_local=maxdiff(z_local, out["z"]))))
""")


def test_global_bn_under_shard_map_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SHARD_MAP_SCRIPT], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  r = json.loads(line[len("RESULT "):])
  # Same numbers up to float32 reduction order (largest error / largest value).
  assert r["h"] < 2e-5 and r["z"] < 2e-5 and r["stats"] < 2e-5, r
  # Per-device BN (no axis_name) sees 2 images per device and gives other outputs.
  assert r["z_local"] > 1e-2, r


# ---------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make, pattern", [
    (lambda: ResNet(19), "19"),
    (lambda: ResNet(50, width_multiplier=0), "width_multiplier.*0"),
    (lambda: ResNet(50, width_multiplier=-1.0), "-1.0"),
    (lambda: ResNet(50, width_multiplier=float("nan")), "nan"),
    (lambda: ResNet(50, bn_momentum=1.5), "1.5"),
    (lambda: ProjectionHead("mlp"), "mlp"),
    (lambda: ProjectionHead(num_layers=0), "num_layers.*0"),
    (lambda: ProjectionHead(out_dim=0), "out_dim.*0"),
    (lambda: ProjectionHead(num_layers=2, layers=3), r"layers.*\[0, 2\].*3"),
    (lambda: ProjectionHead("linear", layers=-1), r"\[0, 1\].*-1"),
    (lambda: SimCLRModel(depth=20), "20"),
    (lambda: SimCLRModel(depth=18, head_mode="deep"), "deep"),
    (lambda: SimCLRModel(depth=18, num_classes=-1), "-1"),
    (lambda: feature_dim(42, 1.0), "42"),
    (lambda: ResNet(18, sk_ratio=0.0625), "sk_ratio > 0 needs a bottleneck depth"),
    (lambda: ResNet(50, se_ratio=-0.5), "se_ratio.*-0.5"),
    (lambda: SimCLRModel(depth=18, head_num_layers=2, probe_layer=3),
     r"probe_layer.*\[0, 2\].*3"),
])
def test_bad_configuration_raises(make, pattern):
  with pytest.raises(ValueError, match=pattern):
    make()


def test_config_refuses_selective_kernels_without_bottlenecks():
  from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = base_config.get_config()  # ResNet-18
  config.model.sk_ratio = 0.0625
  with pytest.raises(config_lib.ConfigError, match="config.model.sk_ratio = 0.0625"):
    config_lib.validate(config)
  config.model.depth = 50
  config_lib.validate(config)


def test_bad_image_shapes_raise():
  model = ResNet(18, 0.125, cifar_stem=False)
  with pytest.raises(ValueError, match="16x16"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  with pytest.raises(ValueError, match=r"\(16, 16, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((16, 16, 3)), train=False)
  with pytest.raises(ValueError, match=r"\(4, 2, 3\)"):
    ProjectionHead().init(jax.random.key(0), jnp.zeros((4, 2, 3)), train=False)


# ---------------------------------------------------------------------------------
# The CPU fusion barrier (models/fusion_barrier.py)
# ---------------------------------------------------------------------------------

def _on_one_device_mesh(fn):
  """fn mapped over a 1-device mesh with axis "batch" (as the train step is)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("batch",))
  P = jax.sharding.PartitionSpec
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=P(),
                               check_vma=False))


def test_fusion_barrier_is_the_identity_and_so_is_its_gradient():
  x = images((2, 4, 4, 3), seed=11)
  g = images((2, 4, 4, 3), seed=12)

  def f(x):
    y, vjp = jax.vjp(lambda x: fb.fusion_barrier(x, "batch"), x)
    return y, vjp(g)[0]

  y, dx = _on_one_device_mesh(f)(x)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(dx), np.asarray(g))


def test_fusion_barrier_only_in_cpu_training_and_gradients_unchanged():
  model = _tiny_model(axis_name="batch", fusion_barrier=True)
  x = images((8, 8, 8, 3), seed=13)
  variables = random_variables(model, x, seed=13)
  params, stats = variables["params"], variables["batch_stats"]

  def loss_and_grad(model, params):
    def loss(params):
      out, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                           mutable=["batch_stats"])
      return _nt_xent(out["z"])
    return jax.value_and_grad(loss)(params)

  def train_hlo_and_result(model):
    fn = _on_one_device_mesh(lambda p: loss_and_grad(model, p))
    return fn.lower(params).as_text(), fn(params)

  hlo_on, (loss_on, grad_on) = train_hlo_and_result(model)
  hlo_off, (loss_off, grad_off) = train_hlo_and_result(model.clone(fusion_barrier=False))
  # 17 ReLUs of ResNet-18 (stem + 2 per block) store an activation through a barrier.
  assert hlo_on.count("collective_permute") == 17
  assert "collective_permute" not in hlo_off
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               grad_on, grad_off)
  assert max(float(np.abs(a).max()) for a in jax.tree.leaves(grad_on)) > 1e-4
  # Evaluation mode stores nothing for a gradient: no barrier there.
  eval_fn = _on_one_device_mesh(lambda p: model.apply(
      {"params": p, "batch_stats": stats}, x, train=False)["h"])
  assert "collective_permute" not in eval_fn.lower(params).as_text()
