"""Tests of simclr_jax.models: architecture, numerics against NumPy, global BN, dtypes."""

import json
import math
import os
import subprocess
import sys
import textwrap

import simclr_jax  # noqa: F401  (sets the XLA CPU flags before JAX starts)

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base as base_config
from simclr_jax.models import (
    ProjectionHead, ResNet, SimCLRModel, create_model, feature_dim, min_image_size)
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


def randomize(variables, seed):
  """Random BN scales/biases and running stats so every path is non-trivial."""
  rng = np.random.default_rng(seed)

  def f(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name == "scale":
      return jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
    if name in ("bias", "mean"):
      return jnp.asarray(rng.normal(0, 0.2, shape), jnp.float32)
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
    return leaf
  return jax.tree_util.tree_map_with_path(f, flax.core.unfreeze(variables))


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

@pytest.mark.parametrize("cifar_stem, hw", [(False, (34, 40)), (True, (9, 8))])
def test_stem_matches_numpy(cifar_stem, hw):
  model = ResNet(18, 0.125, cifar_stem=cifar_stem)
  x = images((2, *hw, 3))
  variables = randomize(model.init(jax.random.key(1), x, train=False), seed=1)
  _, inter = model.apply(variables, x, train=False, return_intermediates=True)
  p, s = variables["params"], variables["batch_stats"]
  y = np_conv_official(np.asarray(x, np.float64), np.asarray(p["stem_conv"]["kernel"]),
                       1 if cifar_stem else 2)
  y = relu(np_bn(y, p["stem_bn"], s["stem_bn"]))
  if not cifar_stem:
    y = np_max_pool_same(y)
  np.testing.assert_allclose(inter["stem"], y, rtol=1e-4, atol=1e-5)


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
  cin = 4 * features if (bottleneck and not proj) else (features if not proj else 5)
  block = block_cls(features=features, strides=stride, use_projection=proj)
  x = images((2, 7, 6, cin), seed=2) - 0.5
  variables = randomize(block.init(jax.random.key(2), x, train=False), seed=2)
  out = block.apply(variables, x, train=False)
  ref = _np_block(np.asarray(x, np.float64), variables["params"],
                  variables["batch_stats"], bottleneck, stride)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  if bottleneck:
    # Stride on the 3x3 conv (v1.5), not on the first 1x1.
    assert variables["params"]["conv2"]["kernel"].shape[:2] == (3, 3)


@pytest.mark.parametrize("block_cls", [BasicBlock, BottleneckBlock])
def test_block_is_identity_at_init(block_cls):
  # The last BN's gamma = 0 makes the residual branch vanish: out = relu(x).
  features = 4
  cin = 4 * features if block_cls is BottleneckBlock else features
  block = block_cls(features=features)
  x = images((4, 6, 6, cin), seed=3) - 0.5
  variables = block.init(jax.random.key(3), x, train=False)
  for train in (False, True):
    out, _ = block.apply(variables, x, train=train, mutable=["batch_stats"])
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
    (50, False, (45, 33))])
def test_encoder_shapes_intermediates_and_zero_init(depth, cifar_stem, hw):
  w = 0.125
  model = ResNet(depth, w, cifar_stem=cifar_stem)
  x = images((2, *hw, 3), seed=4)
  variables = model.init(jax.random.key(4), x, train=False)
  (h, inter), updates = model.apply(variables, x, train=True, return_intermediates=True,
                                    mutable=["batch_stats"])
  assert h.shape == (2, feature_dim(depth, w)) and h.dtype == jnp.float32
  expansion = 4 if depth >= 50 else 1
  stem_down = 0 if cifar_stem else 2
  assert inter["stem"].shape == (2, _ceil_half(hw[0], stem_down),
                                 _ceil_half(hw[1], stem_down), 8)
  for stage in range(1, 5):
    down = stem_down + stage - 1
    c = int(64 * 2 ** (stage - 1) * w) * expansion
    assert inter[f"block{stage}"].shape == (
        2, _ceil_half(hw[0], down), _ceil_half(hw[1], down), c)
  np.testing.assert_allclose(h, np.asarray(inter["block4"]).mean(axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  # Training mode moves the running statistics (by momentum 0.9).
  old = variables["batch_stats"]["stem_bn"]["mean"]
  new = updates["batch_stats"]["stem_bn"]["mean"]
  batch_mean = (new - 0.9 * old) / 0.1
  assert np.abs(batch_mean).max() > 1e-3

  # Zero-init: the last BN of every block, and only it, starts with gamma = 0.
  last_bn = "bn3" if depth >= 50 else "bn2"
  blocks = [k for k in variables["params"] if k.startswith("block")]
  assert len(blocks) == sum(_ARCH[depth][1])
  for name in blocks:
    for bn, p in variables["params"][name].items():
      if "bn" in bn:
        expected = 0.0 if bn == last_bn else 1.0
        np.testing.assert_array_equal(p["scale"], expected, err_msg=f"{name}/{bn}")
  # No conv has a bias.
  for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"]):
    keys = [k.key for k in path]
    assert not (any("conv" in k for k in keys) and keys[-1] == "bias"), keys


def test_conv_init_is_fan_in_variance_scaling():
  model = ResNet(18, 1.0, cifar_stem=True)
  variables = jax.jit(lambda x: model.init(jax.random.key(5), x, train=False))(
      jnp.zeros((1, 8, 8, 3)))
  kernel = np.asarray(variables["params"]["block4_0"]["conv1"]["kernel"])  # 3x3x256x512
  fan_in = 3 * 3 * 256
  assert abs(kernel.std() - math.sqrt(1.0 / fan_in)) / math.sqrt(1.0 / fan_in) < 0.02
  assert np.abs(kernel).max() <= 2 * math.sqrt(1.0 / fan_in) / 0.8796 + 1e-6  # truncated


# ---------------------------------------------------------------------------------
# Projection head
# ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [2, 3])
def test_nonlinear_head_structure(num_layers):
  head = ProjectionHead("nonlinear", num_layers=num_layers, out_dim=6)
  h = images((5, 10), seed=6)
  variables = head.init(jax.random.key(6), h, train=False)
  p = variables["params"]
  assert sorted(p) == sorted([f"dense_{j}" for j in range(num_layers)]
                             + [f"bn_{j}" for j in range(num_layers)])
  for j in range(num_layers):
    last = j == num_layers - 1
    assert set(p[f"dense_{j}"]) == {"kernel"}  # no Dense bias
    assert p[f"dense_{j}"]["kernel"].shape == (10, 6 if last else 10)
    assert set(p[f"bn_{j}"]) == ({"scale"} if last else {"scale", "bias"})
  assert 0.005 < float(np.std(p["dense_0"]["kernel"])) < 0.015  # N(0, 0.01^2)

  variables = randomize(variables, seed=6)
  (z, hiddens), _ = head.apply(variables, h, train=True, return_hidden=True,
                               mutable=["batch_stats"])
  # NumPy reference, training-mode BN (biased batch variance).
  def bn_train(y, bp):
    y = (y - y.mean(0)) / np.sqrt(y.var(0) + EPS) * bp["scale"]
    return y + bp["bias"] if "bias" in bp else y
  y = np.asarray(h, np.float64)
  ref = [y]
  for j in range(num_layers):
    y = bn_train(y @ np.asarray(p[f"dense_{j}"]["kernel"]), variables["params"][f"bn_{j}"])
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
  variables = linear.init(jax.random.key(7), h, train=False)
  p = variables["params"]
  assert set(p) == {"dense_0", "bn_0"} and set(p["bn_0"]) == {"scale"}
  assert set(p["dense_0"]) == {"kernel"} and p["dense_0"]["kernel"].shape == (8, 3)
  assert linear.apply(variables, h, train=False).shape == (4, 3)

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
  variables = randomize(model.init(jax.random.key(8), x, train=False), seed=8)
  params, stats = variables["params"], variables["batch_stats"]
  assert set(params) == {"encoder", "head", "classifier"}
  assert set(params["classifier"]) == {"kernel", "bias"}

  def loss(params, probe):
    out, _ = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                         mutable=["batch_stats"])
    l = _nt_xent(out["z"])
    if probe == "stop_gradient":
      l += optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    elif probe == "no_stop_gradient":  # control: the same probe fed h directly
      c = params["classifier"]
      logits = out["h"] @ c["kernel"] + c["bias"]
      l += optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return l

  g_plain = jax.grad(loss)(params, "none")
  g_probe = jax.grad(loss)(params, "stop_gradient")
  g_leak = jax.grad(loss)(params, "no_stop_gradient")
  for part in ("encoder", "head"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                 g_plain[part], g_probe[part])
  assert np.abs(g_probe["classifier"]["kernel"]).max() > 0
  leaf_diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                           g_plain["encoder"], g_leak["encoder"])
  assert max(jax.tree.leaves(leaf_diff)) > 1e-6  # the control does leak


def test_encode_method_and_outputs():
  model = _tiny_model(num_classes=3)
  x = images((4, 8, 8, 3), seed=9)
  variables = model.init(jax.random.key(9), x, train=False)
  out = model.apply(variables, x, train=False)
  assert set(out) == {"h", "z", "logits"}
  assert out["h"].shape == (4, 64) and out["z"].shape == (4, 8)
  assert out["logits"].shape == (4, 3)
  assert all(v.dtype == jnp.float32 for v in out.values())
  h = model.apply(variables, x, train=False, method="encode")
  np.testing.assert_array_equal(h, out["h"])
  no_probe = _tiny_model()
  assert "classifier" not in no_probe.init(jax.random.key(9), x, train=False)["params"]
  assert "logits" not in no_probe.apply(
      no_probe.init(jax.random.key(9), x, train=False), x, train=False)


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


def test_bfloat16_compute_float32_params_and_outputs():
  x = images((8, 16, 16, 3), seed=10)
  m32 = _tiny_model(width_multiplier=0.25)
  m16 = _tiny_model(width_multiplier=0.25, dtype=jnp.bfloat16)
  v32 = m32.init(jax.random.key(10), x, train=False)
  v16 = m16.init(jax.random.key(10), x, train=False)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v16))
  jax.tree.map(np.testing.assert_array_equal, v32, v16)  # same parameters
  variables = randomize(v32, seed=10)
  o32, s32 = m32.apply(variables, x, train=True, mutable=["batch_stats"])
  o16, s16 = m16.apply(variables, x, train=True, mutable=["batch_stats"])
  _, inter16 = m16.apply(
      variables, x, method=lambda m, x: m.encoder(x, False, return_intermediates=True))
  assert inter16["block4"].dtype == jnp.bfloat16  # compute really is bf16
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(s16))
  for key in ("h", "z"):
    assert o16[key].dtype == jnp.float32
    rel = np.linalg.norm(o16[key] - o32[key]) / np.linalg.norm(o32[key])
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); over ~20 layers with
    # BN the error stays within a few percent.
    assert 0 < rel < 0.05, (key, rel)


# ---------------------------------------------------------------------------------
# Global BN under shard_map (8 CPU devices, subprocess)
# ---------------------------------------------------------------------------------

_SHARD_MAP_SCRIPT = textwrap.dedent("""
    import json
    import simclr_jax  # noqa: F401
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from simclr_jax.models import SimCLRModel

    assert jax.device_count() == 8, jax.devices()
    kw = dict(depth=18, width_multiplier=0.125, cifar_stem=True, head_num_layers=3,
              proj_dim=8)
    single = SimCLRModel(**kw)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 3)), jnp.float32)
    variables = single.init(jax.random.key(0), x, train=False)
    rng = np.random.default_rng(1)
    # Non-zero gammas everywhere so that every BN shapes the outputs.
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)
        if p[-1].key == "scale" else v, variables)
    out, upd = single.apply(variables, x, train=True, mutable=["batch_stats"])

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

    def maxdiff(a, b):
      return max(float(np.abs(np.asarray(p) - np.asarray(q)).max())
                 for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    h, z, stats = run("batch")
    h_local, z_local, _ = run(None)
    print("RESULT", json.dumps(dict(
        h=maxdiff(h, out["h"]), z=maxdiff(z, out["z"]),
        stats=maxdiff(stats, upd["batch_stats"]),
        h_scale=float(np.abs(np.asarray(out["h"])).max()),
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
  assert r["h_scale"] > 0.1
  assert r["h"] < 1e-5 and r["z"] < 1e-4 and r["stats"] < 1e-5, r
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
    (lambda: SimCLRModel(depth=20), "20"),
    (lambda: SimCLRModel(depth=18, head_mode="deep"), "deep"),
    (lambda: SimCLRModel(depth=18, num_classes=-1), "-1"),
    (lambda: feature_dim(42, 1.0), "42"),
])
def test_bad_configuration_raises(make, pattern):
  with pytest.raises(ValueError, match=pattern):
    make()


def test_bad_image_shapes_raise():
  model = ResNet(18, 0.125, cifar_stem=False)
  with pytest.raises(ValueError, match="16x16"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  with pytest.raises(ValueError, match=r"\(16, 16, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((16, 16, 3)), train=False)
  with pytest.raises(ValueError, match=r"\(4, 2, 3\)"):
    ProjectionHead().init(jax.random.key(0), jnp.zeros((4, 2, 3)), train=False)
