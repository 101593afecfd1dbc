"""Evaluation modes' building blocks: checkpoint loading, the SimCLR v2 head prefix,
the linear-evaluation and fine-tuning steps (NumPy reference, device-count
invariance), eval counts, cached batches and config checks."""

import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from configs import base
from simclr_jax import config_lib
from simclr_jax import eval_setup
from simclr_jax import finetune
from simclr_jax import linear_eval
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import pretrained as pretrained_lib
from simclr_jax import steps
from simclr_jax import supervised
from simclr_jax import supervised_optim
from simclr_jax.models.heads import ProjectionHead
from tests import pretrained_fixture
from tests.subproc import run_worker


@pytest.fixture
def pretrain_dir(tiny_checkpoint):
  """(workdir with checkpoints at steps 3 and 7, step-7 variables, config)."""
  workdir, variables, config = tiny_checkpoint
  return workdir, variables, config.copy_and_resolve_references()


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


# --- loading the pretrained checkpoint ----------------------------------------------


@pytest.mark.parametrize("where", ["workdir", "checkpoints", "step"])
def test_load_pretrained_latest_from_any_level(pretrain_dir, where):
  workdir, variables, config = pretrain_dir
  path = {"workdir": workdir, "checkpoints": os.path.join(workdir, "checkpoints"),
          "step": os.path.join(workdir, "checkpoints", "7")}[where]
  pre = pretrained_lib.load_pretrained(path)
  assert pre.step == 7
  _assert_trees_equal(pre.variables, variables)
  assert "classifier" not in pre.variables["params"]  # the online probe is dropped
  assert pre.model_config.to_dict() == config.model.to_dict()  # model from the meta


def test_load_pretrained_older_step(pretrain_dir):
  workdir, variables, _ = pretrain_dir
  pre = pretrained_lib.load_pretrained(os.path.join(workdir, "checkpoints", "3"))
  assert pre.step == 3
  kernel = lambda v: v["params"]["encoder"]["stem_conv"]["kernel"]
  assert not np.array_equal(kernel(pre.variables), kernel(variables))


def test_load_pretrained_from_a_relative_path(pretrain_dir, monkeypatch):
  workdir, variables, _ = pretrain_dir
  monkeypatch.chdir(os.path.dirname(workdir))
  pre = pretrained_lib.load_pretrained(os.path.basename(workdir))  # Orbax needs absolute
  assert pre.step == 7 and pre.path == os.path.join(workdir, "checkpoints", "7")
  _assert_trees_equal(pre.variables, variables)


def test_load_pretrained_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    pretrained_lib.load_pretrained(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="init_from = ''"):
    pretrained_lib.load_pretrained("")
  # Only an unfinished (temporary) step directory: not a checkpoint.
  os.makedirs(tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-123" / "state")
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    pretrained_lib.load_pretrained(str(tmp_path))


def test_init_from_defaults_to_workdir(pretrain_dir):
  config = pretrain_dir[2].copy_and_resolve_references()
  assert pretrained_lib.init_from(config, "/w") == "/w"
  config.init_from = "/elsewhere"
  assert pretrained_lib.init_from(config, "/w") == "/elsewhere"


# --- fine-tuning network ------------------------------------------------------------


@pytest.mark.parametrize("mode,num_layers", [("nonlinear", 3), ("nonlinear", 2),
                                             ("linear", 1), ("none", 1)])
@pytest.mark.parametrize("train", [False, True])
def test_head_prefix_equals_whole_head_hiddens(mode, num_layers, train):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(6, 12)).astype(np.float32))
  head = ProjectionHead(mode=mode, num_layers=num_layers, out_dim=5)
  variables = head.init(jax.random.PRNGKey(1), h, train=False)
  variables = pretrained_fixture.perturbed_params(variables, rng)  # scales, stats > 0
  kwargs = {"mutable": ["batch_stats"]} if train else {}
  out = head.apply(variables, h, train=train, return_hidden=True, **kwargs)
  hiddens = (out[0] if train else out)[1]
  total = head.total_layers
  assert total == {"none": 0, "linear": 1}.get(mode, num_layers)
  assert len(hiddens) == total + 1
  for k in range(total + 1):
    prefix = ProjectionHead(mode=mode, num_layers=num_layers, out_dim=5, layers=k)
    sub = {kind: {n: v for n, v in tree.items() if int(n.split("_")[1]) < k}
           for kind, tree in variables.items()}
    own = prefix.init(jax.random.PRNGKey(2), h, train=False)  # only layers < k exist
    assert sorted(own.get("params", {})) == sorted(sub.get("params", {})), f"k={k}"
    got = prefix.apply(sub, h, train=train, **kwargs)
    got = got[0] if train else got
    np.testing.assert_allclose(got, hiddens[k], rtol=1e-6, atol=1e-6, err_msg=f"k={k}")


@pytest.mark.parametrize("head_layers,zero_init", [(0, True), (1, False), (3, False)])
def test_finetune_net_starts_from_pretrained_weights(pretrain_dir, head_layers, zero_init):
  _, variables, config = pretrain_dir
  net = finetune.FinetuneNet(model_config=config.model.to_dict(), num_classes=7,
                             head_layers=head_layers, zero_init_head=zero_init)
  v = finetune.finetune_variables(net, variables, 16, seed=0)
  _assert_trees_equal(v["params"]["encoder"], variables["params"]["encoder"])
  _assert_trees_equal(v["batch_stats"]["encoder"], variables["batch_stats"]["encoder"])
  if head_layers:
    assert sorted(v["params"]["head"]) == sorted(
        [f"dense_{j}" for j in range(head_layers)] + [f"bn_{j}" for j in range(head_layers)])
  else:
    assert "head" not in v["params"]
  kernel = np.asarray(v["params"]["classifier"]["kernel"])
  assert kernel.shape == (64 if head_layers < 3 else 16, 7)
  if zero_init:
    assert not np.any(kernel)
    return
  assert 0.005 < kernel.std() < 0.02  # official N(0, 0.01^2) head init
  # The network's logits are the fresh head applied to the pretrained model's hidden k.
  images = np.random.default_rng(1).uniform(size=(4, 16, 16, 3)).astype(np.float32)
  model = models.create_model(config.model)

  @jax.jit
  def want_and_got(images):
    h = model.apply(variables, images, train=False)["h"]
    _, hiddens = model.apply(variables, h, train=False, return_hidden=True,
                             method=lambda m, x, **kw: m.head(x, **kw))
    cls = v["params"]["classifier"]
    return (hiddens[head_layers] @ cls["kernel"] + cls["bias"],
            net.apply(v, images, train=False))

  want, got = want_and_got(images)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- the linear-evaluation step against NumPy ----------------------------------------


def numpy_linear_eval(x, y, num_classes, steps, lr_fn, momentum, weight_decay):
  """Softmax regression from zero by Nesterov momentum SGD (TF MomentumOptimizer form:
  m = mu m + g; w -= lr (g + mu m)), L2 decay on the kernel only."""
  w, b = np.zeros((x.shape[1], num_classes)), np.zeros(num_classes)
  mw, mb = np.zeros_like(w), np.zeros_like(b)
  onehot = np.eye(num_classes)[y]
  for s in range(steps):
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    gw = x.T @ (p - onehot) / len(x) + weight_decay * w
    gb = (p - onehot).mean(0)
    mw, mb = momentum * mw + gw, momentum * mb + gb
    w, b = w - lr_fn(s) * (gw + momentum * mw), b - lr_fn(s) * (gb + momentum * mb)
  return w, b


def test_linear_step_on_features_matches_numpy():
  optim = base.linear_eval_config().linear_eval.optim
  optim.weight_decay = 0.05
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 6)).astype(np.float32)
  y = rng.integers(0, 4, 16).astype(np.int32)
  mesh = parallel.make_mesh()
  tx, schedule = supervised_optim.create_optimizer(
      optim, batch_size=16, num_examples=16, total_steps=5,
      whole_tree_is_classifier=True)
  classifier = linear_eval.linear_classifier(4)
  state = parallel.replicate(linear_eval.init_classifier_state(classifier, 6, tx), mesh)
  assert not np.any(jax.device_get(state.params)["kernel"])  # zero-initialised
  step = supervised.shard_supervised_step(
      linear_eval.make_linear_step(lambda _, f: f, classifier, tx, schedule), mesh, 3)
  for _ in range(4):
    state, metrics = step(state, {}, parallel.shard_batch({"image": x, "label": y}, mesh))
  w, b = numpy_linear_eval(x, y, 4, 4, lambda s: float(schedule(s)), 0.9, 0.05)
  params = jax.device_get(state.params)
  np.testing.assert_allclose(params["kernel"], w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(params["bias"], b, rtol=1e-4, atol=1e-6)
  assert np.abs(w).max() > 1e-3  # it moved
  # Official schedule: LR 0.1 x 16/256 at step 0 (no warm-up), cosine to 0.
  assert float(schedule(0)) == pytest.approx(0.1 * 16 / 256)
  assert float(schedule(5)) == pytest.approx(0.0, abs=1e-9)


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("steps")
  run_worker("eval_steps_devices.py", str(root / "out.npz"), str(root / "pretrain"),
             devices=8, timeout=400)
  return dict(np.load(root / "out.npz"))


def _group(results, prefix):
  return {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name,devices", [("linear", "2"), ("linear", "8"),
                                          ("finetune1", "8")])
def test_steps_are_device_count_invariant(device_runs, name, devices):
  """k devices (shard_map, pmean of gradients, global BN) = one plain update on the
  whole batch, for linear evaluation and for fine-tuning from head layer 1."""
  ref, got = _group(device_runs, f"{name}/ref/"), _group(device_runs, f"{name}/{devices}/")
  assert set(ref) == set(got) and len(ref) > (1 if name == "linear" else 60)
  np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
  for key in ref:
    np.testing.assert_allclose(got[key], ref[key], rtol=2e-4, atol=2e-6, err_msg=key)


def test_finetuning_moves_every_layer_and_statistic(device_runs):
  ref, init = _group(device_runs, "finetune1/ref/"), _group(device_runs, "finetune1/init/")
  kernels = [k for k in ref if "kernel" in k]
  stats = [k for k in ref if k.startswith("['stats']")]
  assert any("['head']" in k for k in kernels) and any("['encoder']" in k for k in kernels)
  assert all(np.abs(ref[k] - init[k]).max() > 1e-7 for k in kernels), "a frozen layer"
  assert all(np.abs(ref[k] - init[k]).max() > 1e-7 for k in stats), "BN in inference mode"


# --- evaluation counts, cached batches, configs ----------------------------------------


def test_eval_counts_match_numpy():
  rng = np.random.default_rng(2)
  mesh = parallel.make_mesh()
  for num_classes in (3, 10):  # top-5 capped at the class count
    logits = rng.normal(size=(12, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, 12).astype(np.int32)
    mask = np.arange(12) < 9  # 3 padding rows
    step = supervised.make_eval_step(lambda v, x: x, mesh)
    counts = jax.device_get(step({}, parallel.shard_batch(
        {"image": logits, "label": labels, "mask": mask}, mesh)))
    ranked = np.argsort(-logits, 1)
    assert counts["count"] == 9
    assert counts["top1"] == (ranked[:9, 0] == labels[:9]).sum()
    assert counts["top5"] == (ranked[:9, :5] == labels[:9, None]).any(1).sum()


def test_cached_batches_are_seeded_epochs():
  feats = np.arange(10, dtype=np.float32)[:, None]
  labels = np.arange(10)
  it = linear_eval.cached_batches(feats, labels, batch_size=4, seed=3)
  epoch1 = [next(it) for _ in range(2)]  # 10 // 4 = 2 full batches per epoch
  seen = np.concatenate([b["label"] for b in epoch1])
  assert len(set(seen.tolist())) == 8
  np.testing.assert_array_equal(np.concatenate([b["image"][:, 0] for b in epoch1]), seen)
  again = linear_eval.cached_batches(feats, labels, batch_size=4, seed=3)
  np.testing.assert_array_equal(next(again)["label"], epoch1[0]["label"])
  other = linear_eval.cached_batches(feats, labels, batch_size=4, seed=4)
  assert not np.array_equal(next(other)["label"], epoch1[0]["label"])


@pytest.mark.parametrize("mode,field,value,match", [
    ("finetune", "finetune.label_fraction", 0.0, "config.finetune.label_fraction = 0.0"),
    ("finetune", "finetune.label_fraction", 1.5, "config.finetune.label_fraction = 1.5"),
    ("finetune", "finetune.from_projection_layer", -1,
     r"from_projection_layer = -1 .*integer >= 0"),
    ("finetune", "finetune.batch_size", 0, "config.finetune.batch_size = 0"),
    ("finetune", "finetune.num_epochs", 0, "config.finetune.num_epochs = 0"),
    ("finetune", "finetune.optim.name", "adam", "config.finetune.optim.name = 'adam'"),
    ("linear_eval", "linear_eval.batch_size", -4, "config.linear_eval.batch_size = -4"),
    ("linear_eval", "linear_eval.num_epochs", -1, "config.linear_eval.num_epochs = -1"),
    ("linear_eval", "augment.area_range", (0.5, 0.2), "config.augment.area_range = "),
    ("knn", "knn.k", 0, "config.knn.k = 0"),
    ("knn", "knn.temperature", 0.0, "config.knn.temperature = 0.0"),
])
def test_evaluation_config_errors(mode, field, value, match):
  config = {"finetune": base.finetune_config, "linear_eval": base.linear_eval_config,
            "knn": base.get_config}[mode]()
  config.mode = mode
  config_lib.validate(config)  # the base is valid
  config.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.validate(config)


def test_projection_layer_beyond_the_pretrained_head_is_refused():
  config_lib.check_projection_layer("finetune.from_projection_layer", 3, head_layers=3)
  with pytest.raises(config_lib.ConfigError, match=r"from_projection_layer = 4 .*\[0, 3\]"):
    config_lib.check_projection_layer("finetune.from_projection_layer", 4, head_layers=3)


def test_run_length():
  group = base.linear_eval_config().linear_eval
  group.batch_size, group.num_epochs = 32, 2
  # The official count: 100 x 2 // 32 + 1 = 7 steps (N // B = 3 per logged epoch).
  assert steps.run_length(group, 100) == (3, 7)
  group.num_epochs = 0.5  # a fraction of an epoch: 100 x 0.5 // 32 + 1
  assert steps.run_length(group, 100) == (3, 2)
  group.num_train_steps = 5
  assert steps.run_length(group, 100) == (3, 5)
  with pytest.raises(config_lib.ConfigError, match="linear_eval.batch_size = 32"):
    steps.run_length(group, 20, prefix="linear_eval.")


def test_head_layer_count():
  config = pretrained_fixture.tiny_config(head_num_layers=3).model
  assert eval_setup.head_layer_count(config) == 3
  config.head_mode = "linear"
  assert eval_setup.head_layer_count(config) == 1
  config.head_mode = "none"
  assert eval_setup.head_layer_count(config) == 0
