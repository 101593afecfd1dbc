"""The official recipe: the paper configs train as google-research/simclr trains.

Objective scale (official 2L), brightness (simclrv1 / simclrv2), projection-head depth,
the evaluation optimiser's LARS masks, the official step and warm-up counts, partial
freezing (fine_tune_after_block) and the official contrastive accuracy, each against an
independent NumPy / tf.image reference or the official formula's numbers.
"""

import functools
import importlib

import ml_collections
import numpy as np
import pytest
from scipy import stats

import jax
import jax.numpy as jnp
import tensorflow as tf

from configs import base
from simclr_jax import augment as A
from simclr_jax import config_lib
from simclr_jax import finetune
from simclr_jax import linear_eval
from simclr_jax import losses
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import steps
from simclr_jax import supervised
from simclr_jax import supervised_optim
from simclr_jax import train_step as ts
from tests import pretrained_fixture

PRETRAINING_CONFIGS = ("imagenet", "imagenet_v2", "cifar10")
EVALUATION_CONFIGS = ("imagenet_v2_finetune_1pct", "imagenet_v2_finetune_10pct",
                      "imagenet_linear_eval", "cifar10_linear_eval", "imagenet_finetune_1pct",
                      "imagenet_finetune_10pct")


def _config(name):
  return importlib.import_module(f"configs.{name}").get_config()


# --- 1. objective scale ---------------------------------------------------------------


def official_loss(z_a, z_b, tau):
  """The official objective in float64: mean over N of (loss_a + loss_b), where loss_a
  is the cross-entropy of [logits_ab, logits_aa (self masked)] at the positive."""
  a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
  b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
  n = len(a)
  mask = np.eye(n) * 1e9

  def ce(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[np.arange(n), np.arange(n)]

  loss_a = ce(np.concatenate([a @ b.T / tau, a @ a.T / tau - mask], axis=1))
  loss_b = ce(np.concatenate([b @ a.T / tau, b @ b.T / tau - mask], axis=1))
  return np.mean(loss_a + loss_b)


def _numerical_grad(fn, x, h=1e-6):
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[idx] += h
    minus[idx] -= h
    grad[idx] = (fn(plus) - fn(minus)) / (2 * h)
  return grad


@pytest.mark.parametrize("name", ["imagenet", "imagenet_v2", "cifar10"])
def test_paper_configs_train_with_the_official_objective(name):
  config = _config(name)
  rng = np.random.default_rng(0)
  z_a = rng.normal(size=(8, 16))
  z_b = z_a + 0.5 * rng.normal(size=(8, 16))
  tau = config.loss.temperature

  def ours(a, b):
    return losses.nt_xent(a, b, temperature=tau, hidden_norm=config.loss.hidden_norm,
                          official_scaling=config.loss.official_scaling)[0]

  loss = ours(z_a.astype(np.float32), z_b.astype(np.float32))
  np.testing.assert_allclose(loss, official_loss(z_a, z_b, tau), rtol=1e-5)
  g_a, g_b = jax.grad(ours, argnums=(0, 1))(z_a.astype(np.float32), z_b.astype(np.float32))
  want_a = _numerical_grad(lambda a: official_loss(a, z_b, tau), z_a)
  want_b = _numerical_grad(lambda b: official_loss(z_a, b, tau), z_b)
  np.testing.assert_allclose(g_a, want_a, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(g_b, want_b, rtol=1e-3, atol=1e-5)


def test_paper_loss_stays_available():
  rng = np.random.default_rng(1)
  z_a, z_b = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  loss = losses.nt_xent(z_a.astype(np.float32), z_b.astype(np.float32), temperature=0.5,
                        official_scaling=False)[0]
  np.testing.assert_allclose(loss, official_loss(z_a, z_b, 0.5) / 2, rtol=1e-5)
  assert _config("digits").loss.official_scaling is False  # tuned with L, stated there


def test_official_contrastive_accuracy_and_hidden_norm():
  rng = np.random.default_rng(2)
  z_a = rng.normal(size=(12, 4)).astype(np.float32)
  z_b = (z_a + 0.8 * rng.normal(size=(12, 4))).astype(np.float32)
  _, aux = losses.nt_xent(z_a, z_b, temperature=0.5)
  a = z_a / np.linalg.norm(z_a, axis=1, keepdims=True)
  b = z_b / np.linalg.norm(z_b, axis=1, keepdims=True)
  want = np.mean(np.argmax(a @ b.T, axis=1) == np.arange(12))  # top-1 over logits_ab
  assert 0 < want < 1
  np.testing.assert_allclose(aux["contrast_acc_official"], want)
  # hidden_norm=False: raw dot products (official hidden_norm flag).
  loss = losses.nt_xent(z_a, z_b, temperature=4.0, hidden_norm=False,
                        official_scaling=True)[0]
  a, b = z_a.astype(np.float64), z_b.astype(np.float64)
  n, mask = 12, np.eye(12) * 1e9
  def ce(logits):
    m = logits.max(axis=1, keepdims=True)
    return -(logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True)))[np.arange(n),
                                                                               np.arange(n)]
  want_loss = np.mean(ce(np.concatenate([a @ b.T / 4, a @ a.T / 4 - mask], 1)) +
                      ce(np.concatenate([b @ a.T / 4, b @ b.T / 4 - mask], 1)))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert abs(want_loss - official_loss(a, b, 4.0)) > 1e-3  # normalising differs


# --- 2. brightness ----------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jittered_gray(impl, n=1000, strength=0.5):
  """Colour jitter of constant 0.5 images: contrast, saturation and hue leave a grey
  constant image unchanged, so each view is 0.5 moved by its brightness draw alone."""
  spec = A.ViewSpec(image_size=4, color_strength=strength, color_jitter_prob=1.0,
                    grayscale_prob=0.0, jitter_impl=impl)
  views = tf.fill([n, 4, 4, 3], 0.5)
  u = tf.random.stateless_uniform([n, spec.num_uniforms], seed=[5, 6])
  out = A.finish_views(views, u, spec).numpy()
  assert np.ptp(out.reshape(n, -1), axis=1).max() < 1e-5  # still constant images
  return out[:, 0, 0, 0]


def test_simclrv1_brightness_matches_tf_random_brightness():
  # One draw per image: map_fn runs the op once per element. An op seed, not
  # tf.random.set_seed: a global seed would outlive the test in its worker process.
  want = tf.map_fn(lambda x: tf.image.random_brightness(x, 0.4, seed=7),
                   tf.fill([800, 1, 1, 3], 0.5))
  want = want.numpy()[:, 0, 0, 0] - 0.5
  assert len(np.unique(want)) > 700
  got = _jittered_gray("simclrv1") - 0.5
  assert got.min() >= -0.4 - 1e-6 and got.max() <= 0.4 + 1e-6
  assert stats.ks_2samp(got, want).pvalue > 1e-3
  # The test tells the forms apart: the multiplicative one moves 0.5 by at most 0.2.
  v2 = _jittered_gray("simclrv2") - 0.5
  assert stats.ks_2samp(v2, want).pvalue < 1e-6


def test_simclrv2_brightness_is_a_factor_in_the_official_range():
  factor = _jittered_gray("simclrv2") / 0.5  # s = 0.5: [max(0, 1 - 0.4), 1.4]
  assert factor.min() >= 0.6 - 1e-6 and factor.max() <= 1.4 + 1e-6
  assert stats.kstest((factor - 0.6) / 0.8, "uniform").pvalue > 1e-3


def test_bad_jitter_impl_is_a_config_error():
  config = _config("cifar10")
  config.augment.jitter_impl = "simclrv3"
  with pytest.raises(config_lib.ConfigError,
                     match=r"augment.jitter_impl = 'simclrv3'.*simclrv1.*simclrv2"):
    config_lib.validate(config)


# --- 3. what each config reproduces -----------------------------------------------------


@pytest.mark.parametrize("name,head,jitter,wd", [
    ("imagenet", 2, "simclrv1", 1e-6), ("imagenet_v2", 3, "simclrv2", 1e-4),
    ("cifar10", 3, "simclrv2", 1e-4)])
def test_pretraining_configs(name, head, jitter, wd):
  c = _config(name)
  assert (c.model.head_num_layers, c.augment.jitter_impl, c.optim.weight_decay) == (
      head, jitter, wd)
  config_lib.validate(c)


@pytest.mark.parametrize("name", PRETRAINING_CONFIGS)
def test_paper_configs_use_the_official_objective(name):
  assert _config(name).loss.official_scaling is True


def test_v2_finetune_recipe():
  c = _config("imagenet_v2_finetune_1pct")
  ft = c.finetune
  assert (c.dataset, ft.batch_size, ft.num_epochs, ft.from_projection_layer) == (
      "imagenet2012_subset/1pct", 1024, 60, 1)
  assert ft.zero_init_head and ft.fine_tune_after_block == -1
  assert (ft.optim.name, ft.optim.base_lr, ft.optim.lr_scaling, ft.optim.weight_decay,
          ft.optim.warmup_epochs) == ("lars", 0.005, "sqrt", 0.0, 0.0)
  assert _config("imagenet_v2_finetune_10pct").finetune.num_epochs == 30


# --- 5. step counts ---------------------------------------------------------------------


@pytest.mark.parametrize("n,batch,epochs,warmup_epochs,total,warmup", [
    (1_281_167, 4096, 100, 10, 31_279, 3_127),  # ImageNet (spec: 31,279 / 3,127)
    (50_000, 512, 1000, 10, 97_657, 976),  # CIFAR-10, the official README command
    (12_811, 1024, 60, 10, 751, 125),  # imagenet2012_subset/1pct, v2 fine-tuning batch
    (12_811, 4096, 60, 0, 188, 0),  # 1% subset at B = 4096: 188, not 180 steps
])
def test_official_step_counts(n, batch, epochs, warmup_epochs, total, warmup):
  stage = ml_collections.ConfigDict(dict(batch_size=batch, num_epochs=float(epochs),
                                         num_train_steps=-1))
  assert steps.run_length(stage, n) == (n // batch, total)
  assert steps.epochs_to_steps(warmup_epochs, n, batch) == warmup


def test_imagenet_config_schedule_follows_the_official_counts():
  config = _config("imagenet")
  steps_per_epoch, total = steps.run_length(config, 1_281_167)
  assert (steps_per_epoch, total) == (312, 31_279)
  _, schedule = ts.create_optimizer(config, 1_281_167, total)
  peak = 0.075 * 4096 ** 0.5
  np.testing.assert_allclose(float(schedule(3127)), peak, rtol=1e-6)
  assert float(schedule(3126)) < peak * (1 - 1e-4)
  assert float(schedule(total)) == 0.0 and float(schedule(total - 1000)) > 0.0
  ft = _config("imagenet_v2_finetune_1pct").finetune
  assert steps.run_length(ft, 12_811) == (12, 751)


# --- 4. the evaluation optimiser --------------------------------------------------------


def _finetune_net(pretrained_config, **kwargs):
  return finetune.FinetuneNet(model_config=pretrained_config.model.to_dict(),
                              num_classes=5, head_layers=1, **kwargs)


def _random_variables(module, seed=0):
  """Variables of `module` with random values (shapes from jax.eval_shape, no compile):
  BN variances and scales in [0.5, 1.5], everything else N(0, 0.1^2)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0),
                                              jnp.zeros((2, 16, 16, 3)), train=False))

  def leaf(path, x):
    if jax.tree_util.keystr(path).endswith(("['var']", "['scale']")):
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    return (0.1 * rng.normal(size=x.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _net_params(net):
  return _random_variables(net)["params"]


def test_lars_masks_on_a_finetune_parameter_tree():
  params = _net_params(_finetune_net(pretrained_fixture.tiny_config(head_num_layers=3)))
  adapted = supervised_optim.adaptation_mask(params)
  l2 = supervised_optim.classifier_l2_mask(params)
  for path, on in jax.tree_util.tree_leaves_with_path(adapted):
    name = jax.tree_util.keystr(path)
    is_kernel = name.endswith("['kernel']")
    in_classifier = name.startswith("['classifier']")
    assert on == (is_kernel and not in_classifier), name
  for path, on in jax.tree_util.tree_leaves_with_path(l2):
    name = jax.tree_util.keystr(path)
    assert on == (name == "['classifier']['kernel']"), name
  # Linear evaluation: the whole tree is the classifier, nothing adapted.
  clf = {"kernel": np.ones((4, 3)), "bias": np.ones(3)}
  assert not any(jax.tree.leaves(supervised_optim.adaptation_mask(clf, True)))


def test_lars_update_of_the_classifier_is_not_scaled_by_a_trust_ratio():
  config = _config("imagenet_v2_finetune_1pct").finetune.optim
  config.weight_decay = 0.1  # the recipe has 0; decay must show to be tested
  params = _net_params(_finetune_net(pretrained_fixture.tiny_config(head_num_layers=3)))
  rng = np.random.default_rng(3)
  grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
  params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32),
                        params)
  tx, schedule = supervised_optim.create_optimizer(config, batch_size=1024,
                                                   num_examples=12_811, total_steps=751)
  updates, _ = jax.jit(lambda g, p: tx.update(g, tx.init(p), p))(grads, params)
  lr = float(schedule(0))
  np.testing.assert_allclose(lr, 0.005 * 1024 ** 0.5, rtol=1e-6)
  w, g = params["classifier"]["kernel"], grads["classifier"]["kernel"]
  np.testing.assert_allclose(updates["classifier"]["kernel"], -lr * (g + 0.1 * w),
                             rtol=1e-5, atol=1e-8)  # L2 term, no trust ratio
  np.testing.assert_allclose(updates["classifier"]["bias"], -lr * grads["classifier"]["bias"],
                             rtol=1e-5)
  w, g = params["encoder"]["block2_0"]["conv1"]["kernel"], grads["encoder"]["block2_0"][
      "conv1"]["kernel"]
  d = g + 0.1 * w
  trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(d)
  np.testing.assert_allclose(updates["encoder"]["block2_0"]["conv1"]["kernel"],
                             -lr * trust * d, rtol=1e-4)
  bn = grads["encoder"]["block2_0"]["bn1"]["scale"]
  np.testing.assert_allclose(updates["encoder"]["block2_0"]["bn1"]["scale"], -lr * bn,
                             rtol=1e-5)


# --- partial freezing -------------------------------------------------------------------


def test_partial_freezing_leaves_exactly_the_frozen_blocks_unchanged():
  k = 2  # stem and block groups 1-2 frozen, 3-4, head layer and classifier trained
  pre = pretrained_fixture.tiny_config(head_num_layers=3)
  net = _finetune_net(pre, fine_tune_after_block=k, axis_name=parallel.AXIS)
  variables = finetune.finetune_variables(
      net, _random_variables(models.create_model(pre.model), seed=1), 16, seed=0)
  optim_config = base.finetune_config().finetune.optim
  # LARS with weight decay: a frozen kernel would move by its decay alone.
  optim_config.update(name="lars", weight_decay=0.1, base_lr=0.5)
  tx, schedule = supervised_optim.create_optimizer(
      optim_config, batch_size=8, num_examples=8, total_steps=4, fine_tune_after_block=k)
  state = supervised.SupervisedState(step=jnp.zeros((), jnp.int32),
                                   params=variables["params"],
                                   batch_stats=variables["batch_stats"],
                                   opt_state=tx.init(variables["params"]))
  mesh = parallel.make_mesh(jax.devices()[:1])
  step = supervised.shard_supervised_step(finetune.make_finetune_step(net, tx, schedule), mesh,
                                        num_inputs=2)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(8, 16, 16, 3)).astype(np.float32),
           "label": rng.integers(0, 5, 8).astype(np.int32)}
  new, _ = step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh))
  new = jax.device_get(new)
  frozen = {"stem_conv", "stem_bn"} | {n for n in variables["params"]["encoder"]
                                       if n.startswith(("block1_", "block2_"))}
  for kind in ("params", "batch_stats"):
    for name, before in variables[kind]["encoder"].items():
      after = getattr(new, kind)["encoder"][name]
      changed = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                               jax.tree.leaves(after)))
      assert changed == (name not in frozen), (kind, name)
  for module in ("head", "classifier"):
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(variables["params"][module]), jax.tree.leaves(new.params[module])))


def test_fine_tune_after_block_is_checked():
  config = _config("imagenet_finetune_1pct")
  config.finetune.fine_tune_after_block = 5
  with pytest.raises(config_lib.ConfigError, match=r"finetune.fine_tune_after_block = 5"):
    config_lib.validate(config)


# --- projection-layer selectors and classifier init ----------------------------------


def test_online_probe_reads_the_selected_projection_layer():
  config = pretrained_fixture.tiny_config(head_num_layers=3)
  for layer, width in ((0, 64), (1, 64), (3, 16)):
    config.model.probe_from_projection_layer = layer
    variables = _random_variables(models.create_model(config.model, num_classes=5))
    assert variables["params"]["classifier"]["kernel"].shape == (width, 5)
  # The probe's logits are its classifier on hidden layer 1 (h would not fit a 64 x 5
  # kernel any worse, so compare values).
  config.model.probe_from_projection_layer = 1
  model = models.create_model(config.model, num_classes=5)
  variables = _random_variables(model, seed=3)
  images = np.random.default_rng(4).uniform(size=(4, 16, 16, 3)).astype(np.float32)
  logits, hidden, h = jax.jit(lambda v, x: (
      model.apply(v, x, train=False)["logits"],
      model.apply(v, x, train=False, layer=1, method="hidden"),
      model.apply(v, x, train=False, layer=0, method="hidden")))(variables, images)
  clf = variables["params"]["classifier"]
  np.testing.assert_allclose(logits, hidden @ clf["kernel"] + clf["bias"], rtol=1e-4,
                             atol=1e-5)
  assert np.abs(logits - (h @ clf["kernel"] + clf["bias"])).max() > 1e-3
  config.model.probe_from_projection_layer = 4
  with pytest.raises(config_lib.ConfigError, match=r"probe_from_projection_layer = 4"):
    config_lib.validate(config)


def test_linear_eval_classifier_init_option():
  zero = linear_eval.linear_classifier(10).init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))
  normal = linear_eval.linear_classifier(10, zero_init=False).init(jax.random.PRNGKey(0),
                                                                jnp.zeros((1, 64)))
  assert not np.any(zero["params"]["kernel"])
  assert 0.005 < float(np.std(normal["params"]["kernel"])) < 0.02
  assert not np.any(normal["params"]["bias"])
