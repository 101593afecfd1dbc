"""Tests of simclr_jax.optim against plain-Python/NumPy transcriptions of the rules."""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import optax

from configs.base import get_config
from simclr_jax import optim
from simclr_jax.models import create_model


def _optim_config(**overrides):
  config = get_config().optim
  for key, value in overrides.items():
    config[key] = value
  return config


# ------------------------------------------------------------------------------------
# Learning rate.


@pytest.mark.parametrize("batch_size", [1, 256, 512, 4096])
def test_scaled_learning_rate(batch_size):
  assert optim.scaled_learning_rate(0.3, batch_size, "linear") == pytest.approx(
      0.3 * batch_size / 256)
  assert optim.scaled_learning_rate(0.075, batch_size, "sqrt") == pytest.approx(
      0.075 * batch_size**0.5)
  assert optim.scaled_learning_rate(0.1, batch_size, "none") == pytest.approx(0.1)
  # The paper's equivalence at B = 4096: 0.3 linear = 0.075 sqrt.
  if batch_size == 4096:
    assert optim.scaled_learning_rate(0.3, 4096, "linear") == pytest.approx(
        optim.scaled_learning_rate(0.075, 4096, "sqrt"))


def _reference_lr(step, *, peak, warmup, total, schedule):
  if step < warmup:
    return peak * step / warmup
  if schedule == "constant":
    return peak
  if step >= total:
    return 0.0
  return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("scaling,base_lr,batch_size", [
    ("linear", 0.3, 4096), ("sqrt", 0.075, 4096), ("linear", 1.0, 512), ("none", 0.1, 64)])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
# 7.5 batches an epoch: 2.1 x 7.5 = 15.75 -> 15 warm-up steps (the official W x N // B
# floors before it rounds).
@pytest.mark.parametrize("warmup_epochs,warmup", [(0.0, 0), (2.1, 15), (10.0, 75)])
def test_schedule_matches_formula(scaling, base_lr, batch_size, schedule, warmup_epochs,
                                  warmup):
  num_examples, total = 7 * batch_size + batch_size // 2, 150
  config = _optim_config(base_lr=base_lr, lr_scaling=scaling, schedule=schedule,
                         warmup_epochs=warmup_epochs)
  fn = optim.learning_rate_schedule(config, batch_size=batch_size,
                                    num_examples=num_examples, total_steps=total)
  peak = base_lr * (batch_size / 256 if scaling == "linear" else
                    batch_size**0.5 if scaling == "sqrt" else 1.0)
  steps = np.arange(total + 10)
  got = np.asarray(jax.jit(jax.vmap(fn))(steps))
  want = np.array([_reference_lr(s, peak=peak, warmup=warmup, total=total,
                                 schedule=schedule) for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6 * peak)
  if warmup:
    assert got[0] == 0.0
  np.testing.assert_allclose(got[warmup], peak, rtol=1e-6)
  assert got.max() <= peak * (1 + 1e-6)
  if schedule == "cosine":
    assert np.all(got[total:] == 0.0)
    assert np.all(np.diff(got[warmup:]) <= 1e-6 * peak)


def test_warmup_longer_than_run_is_truncated():
  config = _optim_config(base_lr=1.0, lr_scaling="none", warmup_epochs=10.0)
  fn = optim.learning_rate_schedule(config, batch_size=8, num_examples=24,
                                    total_steps=12)
  got = np.array([fn(s) for s in range(14)])
  np.testing.assert_allclose(got[:12], np.arange(12) / 12, rtol=1e-6)
  assert np.all(got[12:] == 0.0)


# ------------------------------------------------------------------------------------
# Masks.


def _model_params(**model_overrides):
  model_config = get_config().model
  for key, value in model_overrides.items():
    model_config[key] = value
  model = create_model(model_config, num_classes=10)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]


@pytest.mark.parametrize("overrides", [
    {}, {"depth": 50, "head_num_layers": 3, "cifar_stem": False}])
def test_decay_mask_on_real_resnet(overrides):
  params = _model_params(**overrides)
  mask = optim.decay_mask(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  mask_by_path = {jax.tree_util.keystr(p): m
                  for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
  counts = {"conv": 0, "dense": 0, "vector": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [p.key for p in path]
    in_mask = mask_by_path[jax.tree_util.keystr(path)]
    assert isinstance(in_mask, bool)
    if names[0] == "classifier":  # the probe: decayed through an explicit L2 term
      assert not in_mask, names
    elif leaf.ndim == 4:  # conv kernel
      assert in_mask and names[-1] == "kernel", names
      counts["conv"] += 1
    elif leaf.ndim == 2:  # dense kernel
      assert in_mask and names[-1] == "kernel", names
      counts["dense"] += 1
    else:  # BatchNorm scale / bias and every bias are 1-D
      assert leaf.ndim == 1 and names[-1] in ("scale", "bias"), names
      assert not in_mask, names
      counts["vector"] += 1
  depth = overrides.get("depth", 18)
  # Stem + 2 (basic) or 3 (bottleneck) convs per block + one projection per stage.
  blocks = {18: 8, 50: 16}[depth]
  assert counts["conv"] == 1 + blocks * (2 if depth < 50 else 3) + 4
  assert counts["dense"] == overrides.get("head_num_layers", 2)
  assert counts["vector"] > counts["conv"]


def test_decay_mask_with_collection_level():
  params = {"params": {"classifier": {"kernel": np.ones((3, 2)), "bias": np.ones(2)},
                       "encoder": {"conv": {"kernel": np.ones((3, 3, 1, 2))},
                                   "bn": {"scale": np.ones(2), "bias": np.ones(2)}}}}
  mask = optim.decay_mask(params)
  assert mask == {"params": {"classifier": {"kernel": False, "bias": False},
                             "encoder": {"conv": {"kernel": True},
                                         "bn": {"scale": False, "bias": False}}}}


# ------------------------------------------------------------------------------------
# Optimiser steps against NumPy.


def _toy_params(rng):
  """A small tree with conv/dense kernels, BN-like and bias leaves, and a probe."""
  return {
      "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
      "bn": {"scale": 1 + 0.1 * rng.normal(size=4), "bias": 0.1 * rng.normal(size=4)},
      "dense": {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)},
      "zero_dense": {"kernel": np.zeros((3, 2))},  # ||w|| = 0: trust ratio 1
      "classifier": {"kernel": rng.normal(size=(4, 2)), "bias": rng.normal(size=2)},
  }


_DECAYED = {("conv", "kernel"), ("dense", "kernel"), ("zero_dense", "kernel")}


def _leaves(tree):
  return {tuple(p.key for p in path): np.asarray(leaf, np.float64)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _run(tx, params, grads_seq):
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(params)
  for grads in grads_seq:
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return _leaves(params)


def _setup(seed, steps, **overrides):
  rng = np.random.default_rng(seed)
  params = _toy_params(rng)
  grads_seq = [jax.tree.map(lambda x: rng.normal(size=np.shape(x)), params)
               for _ in range(steps)]
  config = _optim_config(base_lr=0.5, lr_scaling="linear", warmup_epochs=1.0,
                         schedule="cosine", **overrides)
  # 2 warm-up steps, then cosine over 8: every step has its own learning rate.
  kwargs = dict(batch_size=512, num_examples=1024, total_steps=10)
  tx, schedule = optim.create_optimizer(config, **kwargs)
  lrs = [_reference_lr(s, peak=1.0, warmup=2, total=10, schedule="cosine")
         for s in range(steps)]
  np.testing.assert_allclose([schedule(s) for s in range(steps)], lrs, rtol=1e-6)
  return tx, params, grads_seq, lrs


@pytest.mark.parametrize("weight_decay,trust,nesterov", [
    (1e-4, 1e-3, False), (0.05, 0.02, True), (0.0, 1.0, False)])
def test_lars_matches_numpy(weight_decay, trust, nesterov):
  steps, momentum = 5, 0.9
  tx, params, grads_seq, lrs = _setup(
      0, steps, name="lars", weight_decay=weight_decay, trust_coefficient=trust,
      momentum=momentum, nesterov=nesterov)
  got = _run(tx, params, grads_seq)

  w = _leaves(params)
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for lr, grads in zip(lrs, grads_seq):
    g_all = _leaves(grads)
    for k in w:
      g = g_all[k]
      if k in _DECAYED:
        g = g + weight_decay * w[k]
        w_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(g)
        ratio = trust * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
      else:
        ratio = 1.0
      scaled_lr = lr * ratio
      v[k] = momentum * v[k] + scaled_lr * g
      w[k] = w[k] - (momentum * v[k] + scaled_lr * g if nesterov else v[k])
  for k in w:
    start = _leaves(params)[k]
    # Compare the total change too: with trust 1e-3 it is far below the weights' scale,
    # so only float32 rounding of the weights (a few ulps over 5 steps) is tolerated.
    ulp = np.finfo(np.float32).eps * max(np.abs(start).max(), 1.0)
    np.testing.assert_allclose(got[k] - start, w[k] - start, rtol=1e-4, atol=4 * ulp,
                               err_msg=str(k))
    np.testing.assert_allclose(got[k], w[k], rtol=1e-6, atol=1e-6, err_msg=str(k))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_numpy(nesterov):
  steps, momentum, weight_decay = 4, 0.9, 0.01
  tx, params, grads_seq, lrs = _setup(
      1, steps, name="sgd", weight_decay=weight_decay, momentum=momentum,
      nesterov=nesterov)
  got = _run(tx, params, grads_seq)
  # TF MomentumOptimizer with L2 in the loss: accum = m accum + g; w -= lr accum
  # (Nesterov: w -= lr (g + m accum)).
  w = _leaves(params)
  accum = {k: np.zeros_like(x) for k, x in w.items()}
  for lr, grads in zip(lrs, grads_seq):
    g_all = _leaves(grads)
    for k in w:
      g = g_all[k] + (weight_decay * w[k] if k in _DECAYED else 0.0)
      accum[k] = momentum * accum[k] + g
      w[k] = w[k] - lr * (g + momentum * accum[k] if nesterov else accum[k])
  for k in w:
    np.testing.assert_allclose(got[k], w[k], rtol=1e-5, atol=1e-6, err_msg=str(k))


def test_sgd_without_momentum():
  tx, params, grads_seq, lrs = _setup(2, 3, name="sgd", weight_decay=0.0, momentum=0.0)
  got = _run(tx, params, grads_seq)
  w = _leaves(params)
  for lr, grads in zip(lrs, grads_seq):
    for k, g in _leaves(grads).items():
      w[k] = w[k] - lr * g
  for k in w:
    np.testing.assert_allclose(got[k], w[k], rtol=1e-5, atol=1e-6, err_msg=str(k))


def test_adamw_matches_numpy():
  steps, weight_decay = 4, 0.1
  b1, b2, eps = 0.9, 0.999, 1e-8  # optax's defaults
  # optax's bias correction raises float32(b2) to the step count: 1 - float32(0.999) is
  # 1.3e-5 away from 0.001 relatively, which shows (6e-6 at step 1) at lr ~ 1.
  b1_f32, b2_f32 = float(np.float32(b1)), float(np.float32(b2))
  tx, params, grads_seq, lrs = _setup(3, steps, name="adamw", weight_decay=weight_decay)
  got = _run(tx, params, grads_seq)
  w = _leaves(params)
  m = {k: np.zeros_like(x) for k, x in w.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for t, (lr, grads) in enumerate(zip(lrs, grads_seq), start=1):
    for k, g in _leaves(grads).items():
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      step = (m[k] / (1 - b1_f32**t)) / (np.sqrt(v[k] / (1 - b2_f32**t)) + eps)
      if k in _DECAYED:
        step = step + weight_decay * w[k]
      w[k] = w[k] - lr * step
  start = _leaves(params)
  for k in w:
    # Steps of ~lr = 1 on weights of ~3: allow float32 rounding, a few ulps of 3.
    ulp = np.finfo(np.float32).eps * max(np.abs(start[k]).max(), 1.0)
    np.testing.assert_allclose(got[k], w[k], rtol=1e-5, atol=8 * ulp, err_msg=str(k))


def test_weight_decay_mask_override():
  rng = np.random.default_rng(4)
  params = _toy_params(rng)
  zero_grads = jax.tree.map(np.zeros_like, params)
  config = _optim_config(name="sgd", base_lr=0.1, lr_scaling="none", warmup_epochs=0.0,
                         schedule="constant", weight_decay=0.5, momentum=0.0)
  kwargs = dict(batch_size=8, num_examples=8, total_steps=10)
  default = _run(optim.create_optimizer(config, **kwargs)[0], params, [zero_grads])
  everything = _run(optim.create_optimizer(
      config, **kwargs, weight_decay_mask=lambda p: jax.tree.map(lambda _: True, p))[0],
      params, [zero_grads])
  start = _leaves(params)
  for k in start:
    decayed = start[k] * (1 - 0.1 * 0.5)
    np.testing.assert_allclose(default[k], decayed if k in _DECAYED else start[k],
                               rtol=1e-6, err_msg=str(k))
    np.testing.assert_allclose(everything[k], decayed, rtol=1e-6, err_msg=str(k))


# ------------------------------------------------------------------------------------
# Bad configs.


_KW = dict(batch_size=256, num_examples=2560, total_steps=100)


@pytest.mark.parametrize("overrides,match", [
    ({"name": "adam"}, r"'adam'"),
    ({"lr_scaling": "quadratic"}, r"'quadratic'"),
    ({"schedule": "step"}, r"\('cosine', 'constant'\).*'step'"),
    ({"base_lr": -0.1}, r"-0\.1"),
    ({"weight_decay": -1e-6}, r"weight_decay.*-1e-06"),
    ({"warmup_epochs": -1.0}, r"warmup_epochs"),
    ({"momentum": 1.0}, r"momentum"),
    ({"trust_coefficient": 0.0}, r"trust_coefficient"),
])
def test_bad_config(overrides, match):
  with pytest.raises(ValueError, match=match):
    optim.create_optimizer(_optim_config(**overrides), **_KW)


def test_bad_config_messages_name_allowed_values():
  for field, value, allowed in (("name", "adam", optim.OPTIMIZERS),
                                ("lr_scaling", "cubic", optim.LR_SCALINGS),
                                ("schedule", "step", optim.SCHEDULES)):
    with pytest.raises(ValueError) as info:
      optim.create_optimizer(_optim_config(**{field: value}), **_KW)
    assert repr(value) in str(info.value)
    assert all(a in str(info.value) for a in allowed)


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=0, num_examples=2560, total_steps=100),
    dict(batch_size=256, num_examples=0, total_steps=100),
    dict(batch_size=256, num_examples=2560, total_steps=0)])
def test_bad_sizes(kwargs):
  with pytest.raises(ValueError, match="must be an int >= 1"):
    optim.create_optimizer(_optim_config(), **kwargs)
