"""Evaluation modes of a pretrained encoder: linear evaluation, fine-tuning and kNN.

Each mode loads the pretraining checkpoint named by `config.init_from` and rebuilds the
network from the config saved in that checkpoint, so only the protocol (config groups
`linear_eval`, `finetune`, `knn`) and the data fields are read from `config`. Training
is data-parallel in the pmap style of the pretraining step: every device runs the
per-device step on its share of the global batch under `shard_map(check_vma=False)`,
gradients are averaged with `pmean`, BN statistics are global.

Protocols (Chen et al. 2020, Appendix B.5/B.6, official code):
  linear_eval: frozen encoder (BN running averages), zero-initialised linear classifier
    on h, Nesterov momentum SGD, crop + flip only, no warm-up, cosine decay.
  finetune: every encoder layer (and optionally the first projection-head layers,
    SimCLR v2) trained with a fresh linear head on a fraction of the labels, BN in
    training mode with statistics over the global batch.
  knn: weighted kNN on L2-normalised h (see knn.py).
"""

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpointing
from simclr_jax import config_lib
from simclr_jax import input_pipeline
from simclr_jax import knn as knn_lib
from simclr_jax import metric_log
from simclr_jax import models
from simclr_jax import steps as steps_lib
from simclr_jax import supervised_optim
from simclr_jax import train_step as ts
from simclr_jax.models.heads import ProjectionHead
from simclr_jax.models.heads import dense_kernel_init
from simclr_jax.models.resnet import FREEZE_THROUGH, ResNet
from simclr_jax.models.simclr import parse_dtype
from simclr_jax.train_step import AXIS

Batch = dict[str, jax.Array]
ConfigDict = ml_collections.ConfigDict

# Metric-name prefix of the linear-evaluation fast path (no augmentation, features
# extracted once): never to be confused with the protocol's numbers.
CACHED_PREFIX = "linear_eval_cached_"
FINE_TUNE_AFTER_BLOCK = FREEZE_THROUGH


# ----------------------------------------------------------------------------------
# The pretrained checkpoint.


@dataclasses.dataclass
class Pretrained:
  """What downstream modes take from a pretraining checkpoint."""
  path: str  # the checkpoint's step directory
  step: int  # pretraining steps the weights saw
  config: ConfigDict  # the pretraining run's config (from the checkpoint's meta)
  variables: dict  # {"params", "batch_stats"} of encoder + head (host numpy arrays)

  @property
  def model_config(self) -> ConfigDict:
    return self.config.model


def load_pretrained(path: str) -> Pretrained:
  """Restores encoder + projection-head variables and the run's config from `path`.

  `path` is a pretraining checkpoint (see find_checkpoint) or an export directory
  (mode=export, or an official checkpoint imported by `python -m simclr_jax.convert`).
  Only params and batch_stats are read (not the optimiser state), as host arrays;
  the online probe or imported supervised head ('classifier') is dropped. Given a
  workdir or checkpoints dir, a checkpoint that does not restore is reported and the one
  before it is used.
  """
  if path and os.path.isfile(os.path.join(path, "model.json")):
    return _load_export(path)
  candidates = checkpointing.find_checkpoints(path)
  skipped = []
  for step_dir in candidates:
    try:
      pretrained = _load_step(step_dir)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged data
      if len(candidates) == 1:
        raise
      skipped.append(f"step {step_dir.name}: {checkpointing.describe(e)}")
      logging.warning("Pretraining checkpoint %s does not restore (%s); trying the one "
                      "before it", step_dir, skipped[-1])
      continue
    if skipped:
      logging.warning("Using pretraining checkpoint step %s; skipped %s", step_dir.name,
                      "; ".join(skipped))
    return pretrained
  raise checkpointing.CheckpointError(f"no checkpoint of config.init_from = {path!r} "
                                      f"restores ({'; '.join(skipped)})")


def _load_step(step_dir: epath.Path) -> Pretrained:
  meta = checkpointing.read_meta(step_dir)
  if not isinstance(meta, dict) or "config" not in meta:
    raise ValueError(f"checkpoint {step_dir} has no saved config in meta/: "
                     "not written by simclr_jax pretraining")
  config = ConfigDict(json.loads(meta["config"]))
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(step_dir / "state").item_metadata.tree
  item = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  variables = checkpointer.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  variables = {kind: {k: v for k, v in tree.items() if k != "classifier"}
               for kind, tree in variables.items()}
  logging.info("Loaded pretrained encoder from %s (step %s)", step_dir, step_dir.name)
  return Pretrained(path=str(step_dir), step=int(step_dir.name), config=config,
                    variables=variables)


def _load_export(path: str) -> Pretrained:
  from simclr_jax import export as export_lib  # pylint: disable=g-import-not-at-top
  _, variables, spec = export_lib.load_variables(path)
  model = {k: v for k, v in export_lib.model_spec_of(spec["model"]).items()
           if k not in ("num_classes", "probe_from_projection_layer")}
  config = ConfigDict({"model": model, "data": {"image_size": spec["input"]["shape"][1]}})
  variables = {kind: {k: v for k, v in tree.items() if k != "classifier"}
               for kind, tree in variables.items()}
  logging.info("Loaded pretrained encoder from export %s", spec["path"])
  return Pretrained(path=spec["path"], step=int(spec.get("pretrain_step") or 0),
                    config=config, variables=variables)


def init_from(config: ConfigDict, workdir: str) -> str:
  """config.init_from, or the workdir itself when empty."""
  return config.init_from or workdir


# ----------------------------------------------------------------------------------
# Config checks and shared set-up.


def _fail(field: str, value, allowed: str):
  raise config_lib.ConfigError(f"config.{field} = {value!r} is not allowed: {allowed}")


def _check_batch(field: str, value) -> None:
  devices, processes = jax.device_count(), jax.process_count()
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    _fail(field, value, "expected an integer >= 1")
  if value % devices or value % processes:
    _fail(field, value, f"a global batch must be divisible by the device count "
                        f"({devices}) and the process count ({processes})")


def _check_run_length(group: ConfigDict, name: str) -> None:
  if group.num_train_steps <= 0 and not group.num_epochs > 0:
    _fail(f"{name}.num_epochs", group.num_epochs,
          f"expected > 0 (or {name}.num_train_steps > 0)")


def validate_linear_eval(config: ConfigDict) -> None:
  _check_batch("linear_eval.batch_size", config.linear_eval.batch_size)
  _check_batch("eval_batch_size", config.eval_batch_size)
  _check_run_length(config.linear_eval, "linear_eval")
  layer = config.linear_eval.from_projection_layer
  if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
    _fail("linear_eval.from_projection_layer", layer, "expected an integer >= 0 (0 = h)")
  if layer and config.linear_eval.cached_features:
    _fail("linear_eval.from_projection_layer", layer,
          "the cached-features fast path reads h only: expected 0 with "
          "linear_eval.cached_features=True")


def check_projection_layer(field: str, layer: int, head_layers: int) -> None:
  """`layer` must name h (0) or one of the pretrained head's `head_layers` layers."""
  if not 0 <= layer <= head_layers:
    _fail(field, layer, f"expected an integer in [0, {head_layers}] (the pretrained "
                        f"projection head has {head_layers} layers; 0 = h)")


def validate_finetune(config: ConfigDict, head_layers: int) -> None:
  """`head_layers`: layers of the pretrained projection head (0 for head_mode "none")."""
  ft = config.finetune
  _check_batch("finetune.batch_size", ft.batch_size)
  _check_batch("eval_batch_size", config.eval_batch_size)
  _check_run_length(ft, "finetune")
  if not 0.0 < ft.label_fraction <= 1.0:
    _fail("finetune.label_fraction", ft.label_fraction, "expected a fraction in (0, 1]")
  layer = ft.from_projection_layer
  if isinstance(layer, bool) or not isinstance(layer, int):
    _fail("finetune.from_projection_layer", layer, "expected an integer (0 = h)")
  check_projection_layer("finetune.from_projection_layer", layer, head_layers)
  if ft.fine_tune_after_block not in FINE_TUNE_AFTER_BLOCK:
    _fail("finetune.fine_tune_after_block", ft.fine_tune_after_block,
          f"expected one of {list(FINE_TUNE_AFTER_BLOCK)} (-1 = every layer, k = the stem "
          "and block groups 1..k frozen)")


def validate_knn(config: ConfigDict) -> None:
  _check_batch("eval_batch_size", config.eval_batch_size)
  if isinstance(config.knn.k, bool) or not isinstance(config.knn.k, int) or config.knn.k < 1:
    _fail("knn.k", config.knn.k, "expected an integer >= 1")
  if not config.knn.temperature > 0:
    _fail("knn.temperature", config.knn.temperature, "expected a number > 0")
  if not isinstance(config.knn.query_batch, int) or config.knn.query_batch < 1:
    _fail("knn.query_batch", config.knn.query_batch, "expected an integer >= 1")


@dataclasses.dataclass
class Setup:
  """The data and devices an evaluation mode runs on."""
  config: ConfigDict
  workdir: str
  data_dir: str | None
  info: Any  # input_pipeline.DatasetInfo
  mesh: jax.sharding.Mesh
  pretrained: Pretrained


def make_setup(config: ConfigDict, workdir: str) -> Setup:
  pretrained = load_pretrained(init_from(config, workdir))
  pre_size = pretrained.config.data.image_size
  if pre_size != config.data.image_size:
    logging.warning("Evaluating at %d px an encoder pretrained at %d px (config.data."
                    "image_size)", config.data.image_size, pre_size)
  data_dir = input_pipeline.default_data_dir(config, workdir)
  info = input_pipeline.dataset_info(config, data_dir=data_dir)
  return Setup(config, workdir, data_dir, info, ts.make_mesh(), pretrained)


def with_batch_size(config: ConfigDict, batch_size: int) -> ConfigDict:
  """A copy of `config` whose input pipeline produces global batches of `batch_size`."""
  config = config.copy_and_resolve_references()
  config.batch_size = batch_size
  return config


def plan_steps(group: ConfigDict, num_examples: int, name: str) -> tuple[int, int]:
  """(steps_per_epoch, total_steps) of a supervised stage over `num_examples` examples,
  as steps.plan counts them."""
  if num_examples < group.batch_size:
    _fail(f"{name}.batch_size", group.batch_size,
          f"expected at most the {num_examples} training examples available")
  return steps_lib.plan(num_examples, group.batch_size, group.num_epochs,
                        group.num_train_steps)


# ----------------------------------------------------------------------------------
# Supervised training machinery shared by linear evaluation and fine-tuning.


class SupervisedState(flax.struct.PyTreeNode):
  """Trainable parameters, BN statistics (fine-tuning) and optimiser state."""
  step: jax.Array  # int32 scalar
  params: Any
  batch_stats: Any
  opt_state: Any


def cross_entropy_and_top1(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def make_eval_step(logits_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """`(variables, global masked batch) -> {"top1", "top5", "count"}` summed over devices.

  `logits_fn(variables, images) -> [b, num_classes]` runs per device; top-5 is capped
  at the class count.
  """
  def step(variables, batch):
    logits = logits_fn(variables, batch["image"])
    k = min(5, logits.shape[-1])
    hits = jax.lax.top_k(logits, k)[1] == batch["label"][:, None]
    mask = batch["mask"].astype(jnp.float32)
    counts = {"top1": jnp.sum(hits[:, 0] * mask), "top5": jnp.sum(hits.any(-1) * mask),
              "count": jnp.sum(mask)}
    return jax.lax.psum(counts, AXIS)

  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                               check_vma=False))


def evaluate_classifier(eval_step: Callable, variables: Any, batches: Iterator[dict],
                        mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Top-1/top-5 accuracy over every real example of `batches` (local shares)."""
  totals = {"top1": 0.0, "top5": 0.0, "count": 0.0}
  for batch in batches:
    counts = jax.device_get(eval_step(variables, ts.shard_batch(batch, mesh)))
    totals = {k: totals[k] + float(counts[k]) for k in totals}
  if totals["count"] == 0:
    raise ValueError("the eval split has no examples")
  return {"top1": totals["top1"] / totals["count"], "top5": totals["top5"] / totals["count"]}


def shard_supervised_step(step: Callable, mesh: jax.sharding.Mesh, num_inputs: int) -> Callable:
  """jit(shard_map(step)): the state and `num_inputs - 2` frozen args replicated, the batch
  (last argument) split along AXIS; the state is donated."""
  in_specs = (P(),) * (num_inputs - 1) + (P(AXIS),)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()),
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=0)


# ----------------------------------------------------------------------------------
# Linear evaluation.


def linear_classifier(num_classes: int, zero_init: bool = True) -> nn.Dense:
  """The linear-evaluation classifier: Dense with a zero bias; kernel zero (official
  linear evaluation) or N(0, 0.01^2)."""
  return nn.Dense(num_classes, kernel_init=_head_init(zero_init),
                  bias_init=nn.initializers.zeros, dtype=jnp.float32,
                  param_dtype=jnp.float32, name="classifier")


def make_linear_step(featurize: Callable, classifier: nn.Module,
                     tx: optax.GradientTransformation, schedule: optax.Schedule) -> Callable:
  """Per-device step `(state, frozen, local batch) -> (state, metrics)`.

  `featurize(frozen, images) -> h [b, C]` never receives gradients (frozen encoder in
  inference mode, or the identity on cached features).
  """
  def step(state: SupervisedState, frozen, batch: Batch):
    h = jax.lax.stop_gradient(featurize(frozen, batch["image"]))

    def loss_fn(params):
      logits = classifier.apply({"params": params}, h)
      return cross_entropy_and_top1(logits, batch["label"])

    (loss, top1), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = jax.lax.pmean({"train_loss": loss, "train_top1": top1}, AXIS)
    metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def encoder_featurize(model, layer: int = 0) -> Callable:
  """`(variables, images) -> h` (layer 0) or projection-head layer `layer`'s output,
  the network in inference mode (BN running averages)."""
  inference = model.clone(axis_name=None)
  return lambda variables, images: inference.apply(variables, images, train=False,
                                                   layer=layer, method="hidden")


def init_classifier_state(classifier: nn.Module, feature_dim: int,
                          tx: optax.GradientTransformation) -> SupervisedState:
  params = classifier.init(jax.random.PRNGKey(0), jnp.zeros((1, feature_dim)))["params"]
  return SupervisedState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                         opt_state=tx.init(params))


def restore_supervised(workdir: str, config: ConfigDict, mode: str,
                       state: SupervisedState) -> tuple[checkpointing.Checkpointer,
                                                        SupervisedState]:
  """The mode's checkpointer (<workdir>/<mode>_checkpoints) and its latest state, if any."""
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints,
                                    name=f"{mode}_checkpoints")
  if ckpt.latest_step() is not None:
    state, _ = ckpt.restore(checkpointing.abstract_like(state))
    logging.info("Resumed %s from step %d (%s)", mode, int(state.step), ckpt.directory)
  return ckpt, state


def train_supervised(step_fn: Callable, state: SupervisedState, frozen: Any,
                     batches: Iterator[dict], *, total_steps: int, mesh: jax.sharding.Mesh,
                     log: metric_log.MetricLog, prefix: str, log_every: int,
                     steps_per_epoch: int, ckpt: checkpointing.Checkpointer | None = None,
                     checkpoint_every: int = 0, meta: dict | None = None,
                     on_eval: Callable | None = None,
                     eval_every: int = 0) -> tuple[SupervisedState, bool]:
  """Steps from state.step to `total_steps`; logs `<prefix>train_*` means every
  `log_every` steps. With `ckpt`: checkpoints every `checkpoint_every` steps, at the
  end and on SIGTERM. Returns (state, whether the last step was reached).
  """
  window = []
  frozen_args = () if frozen is None else (frozen,)
  start = int(state.step)
  t0 = time.time()
  with checkpointing.PreemptionFlag() as preempted:
    for step in range(start + 1, total_steps + 1):
      state, metrics = step_fn(state, *frozen_args, ts.shard_batch(next(batches), mesh))
      window.append(metrics)
      last = step == total_steps
      if step % log_every == 0 or last:
        summary, window = metric_log.mean_metrics(window), []
        if not np.isfinite(summary["train_loss"]):
          raise FloatingPointError(f"non-finite {prefix}train_loss at step {step}")
        summary = {prefix + k: v for k, v in summary.items()}
        summary[prefix + "epoch"] = step / steps_per_epoch
        summary[prefix + "seconds_per_step"] = (time.time() - t0) / (step - start)
        log.write(step, summary)  # also logged to the console by clu
      if on_eval is not None and eval_every > 0 and step % eval_every == 0 and not last:
        log.write(step, on_eval(state))
      if ckpt is None:
        continue
      stop = ckpt.save_if_due(step, state, meta, every=checkpoint_every, last=last,
                              preempted=preempted)
      if stop and not last:
        logging.warning("Preempted: saved %sstep %d; the same command resumes.", prefix,
                        step)
        return state, False
  return state, int(state.step) == total_steps


def train_then_evaluate(mode: str, config: ConfigDict, workdir: str, step_fn: Callable,
                        state: SupervisedState, frozen: Any,
                        batches: Callable[[int], Iterator[dict]],
                        evaluate: Callable[[SupervisedState], dict], *, total_steps: int,
                        steps_per_epoch: int, mesh: jax.sharding.Mesh,
                        extras: dict) -> dict | None:
  """A supervised mode's run: resume, train, evaluate, log; None if stopped by SIGTERM.

  Resumes from <workdir>/<mode>_checkpoints (state is the fresh initial state),
  checkpoints and evaluates as config says, and logs `evaluate(final state)` plus
  `extras` at the last step. `batches(start_step)` opens the training stream.
  """
  ckpt, state = restore_supervised(workdir, config, mode, state)
  with contextlib.closing(ckpt), contextlib.closing(metric_log.MetricLog(workdir)) as log:
    state, done = train_supervised(
        step_fn, state, frozen, batches(int(state.step)), total_steps=total_steps,
        mesh=mesh, log=log, prefix=mode + "_", log_every=config.log_every_steps,
        steps_per_epoch=steps_per_epoch, ckpt=ckpt,
        checkpoint_every=config.checkpoint_every_steps,
        meta=checkpointing.config_meta(config), on_eval=evaluate,
        eval_every=config.eval_every_steps)
    ckpt.wait()
    if not done:
      return None
    results = {**evaluate(state), **extras}
    log.write(total_steps, results)
  return results


def linear_eval(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `linear_eval` mode; returns (and logs) the final top-1/top-5 on eval_split."""
  validate_linear_eval(config)
  setup = make_setup(config, workdir)
  if config.linear_eval.cached_features:
    return _linear_eval_cached(setup)
  le, mesh, pre = config.linear_eval, setup.mesh, setup.pretrained
  steps_per_epoch, total_steps = plan_steps(le, setup.info.num_train_examples, "linear_eval")
  tx, schedule = supervised_optim.create_optimizer(
      le.optim, batch_size=le.batch_size, num_examples=setup.info.num_train_examples,
      total_steps=total_steps, whole_tree_is_classifier=True)
  model = models.create_model(pre.model_config)
  check_projection_layer("linear_eval.from_projection_layer", le.from_projection_layer,
                         head_layer_count(pre.model_config))
  featurize = encoder_featurize(model, le.from_projection_layer)
  classifier = linear_classifier(setup.info.num_classes, le.zero_init_head)
  feature_dim = jax.eval_shape(featurize, pre.variables, jax.ShapeDtypeStruct(
      (1, config.data.image_size, config.data.image_size, 3), jnp.float32)).shape[-1]
  state = ts.replicate(init_classifier_state(classifier, feature_dim, tx), mesh)
  frozen = ts.replicate(pre.variables, mesh)
  step_fn = shard_supervised_step(make_linear_step(featurize, classifier, tx, schedule),
                                  mesh, num_inputs=3)
  eval_step = make_eval_step(
      lambda v, x: classifier.apply({"params": v["classifier"]}, featurize(v["encoder"], x)),
      mesh)

  def evaluate(state):
    acc = evaluate_classifier(eval_step, {"encoder": frozen, "classifier": state.params},
                              _eval_batches(config, setup.data_dir), mesh)
    return {"linear_eval_top1": acc["top1"], "linear_eval_top5": acc["top5"]}

  def batches(start_step):
    return input_pipeline.create_supervised_dataset(
        with_batch_size(config, le.batch_size), data_dir=setup.data_dir,
        split=config.train_split, augment=True, start_step=start_step).as_numpy_iterator()

  logging.info("Linear evaluation: %d steps (%d per epoch), batch %d, frozen encoder of "
               "step %d", total_steps, steps_per_epoch, le.batch_size, pre.step)
  results = train_then_evaluate(
      "linear_eval", config, workdir, step_fn, state, frozen, batches, evaluate,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch, mesh=mesh,
      extras={"linear_eval_epochs": total_steps / steps_per_epoch,
              "pretrain_step": pre.step})
  if results is None:
    return {}
  print(metric_log.format_table(results, title="Linear evaluation (frozen encoder, crop + "
                                               f"flip), {config.eval_split} split"))
  return results


def _eval_batches(config: ConfigDict, data_dir: str | None) -> Iterator[dict]:
  return input_pipeline.create_eval_dataset(config, data_dir=data_dir,
                                            split=config.eval_split).as_numpy_iterator()


def cached_batches(features: np.ndarray, labels: np.ndarray, batch_size: int,
                   seed: int) -> Iterator[dict]:
  """Endless reshuffled epochs of this process's share of global feature batches."""
  rng = np.random.default_rng(seed)
  share = batch_size // jax.process_count()
  lo = jax.process_index() * share
  while True:
    order = rng.permutation(len(features))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      rows = order[start:start + batch_size][lo:lo + share]
      yield {"image": features[rows], "label": labels[rows]}


def _linear_eval_cached(setup: Setup) -> dict[str, float]:
  """Fast path: h of every train image extracted once (centre crop, no augmentation)."""
  config, mesh, pre, le = setup.config, setup.mesh, setup.pretrained, setup.config.linear_eval
  model = models.create_model(pre.model_config)
  variables = ts.replicate(pre.variables, mesh)
  encode = knn_lib.make_encode_fn(model, mesh)
  t0 = time.time()
  train_x, train_y = knn_lib.extract_features(
      encode, variables, knn_lib.split_batches(config, setup.data_dir, config.train_split),
      mesh)
  test_x, test_y = knn_lib.extract_features(
      encode, variables, knn_lib.split_batches(config, setup.data_dir, config.eval_split),
      mesh)
  logging.info("Cached %d train / %d eval features in %.1f s", len(train_x), len(test_x),
               time.time() - t0)
  steps_per_epoch, total_steps = plan_steps(le, len(train_x), "linear_eval")
  tx, schedule = supervised_optim.create_optimizer(
      le.optim, batch_size=le.batch_size, num_examples=len(train_x),
      total_steps=total_steps, whole_tree_is_classifier=True)
  classifier = linear_classifier(setup.info.num_classes, le.zero_init_head)
  state = ts.replicate(init_classifier_state(classifier, train_x.shape[1], tx), mesh)
  step_fn = shard_supervised_step(make_linear_step(lambda _, x: x, classifier, tx, schedule),
                                  mesh, num_inputs=3)
  log = metric_log.MetricLog(setup.workdir)
  try:
    # Minutes at most once the features are cached: not checkpointed.
    state, _ = train_supervised(step_fn, state, {}, cached_batches(train_x, train_y,
                                                                   le.batch_size, config.seed),
                                total_steps=total_steps, mesh=mesh, log=log,
                                prefix=CACHED_PREFIX, log_every=config.log_every_steps,
                                steps_per_epoch=steps_per_epoch)
    params = jax.device_get(state.params)
    logits = np.asarray(test_x @ params["kernel"] + params["bias"])
    correct = knn_lib.topk_correct(logits, test_y)
    results = {CACHED_PREFIX + "top1": float(correct[1].mean()),
               CACHED_PREFIX + "top5": float(correct[5].mean()),
               CACHED_PREFIX + "epochs": total_steps / steps_per_epoch,
               "pretrain_step": pre.step}
    log.write(total_steps, {**results,
                            "protocol": "cached features, no augmentation (fast path)"})
  finally:
    log.close()
  print(metric_log.format_table(
      results, title="Linear evaluation, FAST PATH: cached features, no augmentation "
                     f"(not the official protocol), {config.eval_split} split"))
  return results


# ----------------------------------------------------------------------------------
# Fine-tuning.


def head_layer_count(model_config: ConfigDict) -> int:
  """Layers of the projection head (0 for "none", 1 for "linear")."""
  return ProjectionHead(mode=model_config.head_mode, num_layers=model_config.head_num_layers,
                        out_dim=model_config.proj_dim).total_layers


class FinetuneNet(nn.Module):
  """encoder -> (first `head_layers` projection-head layers) -> linear classifier.

  Submodules 'encoder', 'head' and 'classifier' share the pretrained SimCLRModel's
  parameter names, so the pretrained variables slot in unchanged.
  """
  model_config: Any  # the pretraining config.model (a dict-like of plain values)
  num_classes: int
  head_layers: int = 0
  zero_init_head: bool = False
  axis_name: str | None = None
  fine_tune_after_block: int = -1  # ResNet.freeze_through

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """x: [B, S, S, 3] in [0, 1] -> logits [B, num_classes] float32."""
    mc = self.model_config
    dtype = parse_dtype(mc["dtype"])
    bn = dict(bn_momentum=mc["bn_momentum"], bn_epsilon=mc["bn_epsilon"],
              axis_name=self.axis_name)
    y = ResNet(depth=mc["depth"], width_multiplier=mc["width_multiplier"],
               cifar_stem=mc["cifar_stem"], sk_ratio=mc.get("sk_ratio", 0.0),
               se_ratio=mc.get("se_ratio", 0.0), dtype=dtype,
               freeze_through=self.fine_tune_after_block, name="encoder", **bn)(x, train)
    if self.head_layers > 0:
      y = ProjectionHead(mode=mc["head_mode"], num_layers=mc["head_num_layers"],
                         out_dim=mc["proj_dim"], dtype=dtype, layers=self.head_layers,
                         name="head", **bn)(y, train)
    return nn.Dense(self.num_classes, kernel_init=_head_init(self.zero_init_head),
                    dtype=jnp.float32, param_dtype=jnp.float32, name="classifier")(y)


def finetune_variables(net: FinetuneNet, pretrained_variables: dict, image_size: int,
                       seed: int) -> dict:
  """Pretrained encoder (+ head prefix) variables and a fresh classifier for `net`.

  Only the classifier is initialised (from its own shape): the rest is traced for its
  shapes, never compiled.
  """
  dummy = jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: net.clone(axis_name=None).init(
      jax.random.PRNGKey(0), x, train=False), dummy)
  out = {}
  for kind in ("params", "batch_stats"):
    tree = {}
    for name, expected in shapes.get(kind, {}).items():
      if name == "classifier":
        in_dim = expected["kernel"].shape[0]
        tree[name] = nn.Dense(net.num_classes, kernel_init=_head_init(net.zero_init_head),
                              dtype=jnp.float32, param_dtype=jnp.float32).init(
                                  jax.random.PRNGKey(seed), jnp.zeros((1, in_dim)))["params"]
        continue
      source = pretrained_variables[kind][name]
      if name == "head":  # only the layers the net keeps
        source = {k: v for k, v in source.items() if k in expected}
      _check_same_shapes(expected, source, f"{kind}/{name}")
      tree[name] = source
    out[kind] = tree
  return out


def _head_init(zero: bool):
  return nn.initializers.zeros if zero else dense_kernel_init


def _check_same_shapes(expected, got, what: str) -> None:
  shapes = lambda t: jax.tree.map(lambda a: tuple(np.shape(a) if not hasattr(a, "shape")
                                                  else a.shape), t)
  if shapes(expected) != shapes(got):
    raise ValueError(f"pretrained {what} does not fit the fine-tuning network "
                     "(the checkpoint's model config disagrees with its weights)")


def make_finetune_step(net: FinetuneNet, tx: optax.GradientTransformation,
                       schedule: optax.Schedule) -> Callable:
  """Per-device step `(state, local batch) -> (state, metrics)`; `net` has axis_name
  AXIS (global BN) or None (per-device statistics, averaged after the step)."""
  def step(state: SupervisedState, batch: Batch):
    def loss_fn(params):
      logits, mutated = net.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
      loss, top1 = cross_entropy_and_top1(logits, batch["label"])
      return loss, (mutated["batch_stats"], top1)

    (loss, (batch_stats, top1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = jax.lax.pmean(grads, AXIS)
    if net.axis_name is None:
      batch_stats = jax.lax.pmean(batch_stats, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = jax.lax.pmean({"train_loss": loss, "train_top1": top1}, AXIS)
    metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  return step


def finetune(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `finetune` mode; returns (and logs) the final top-1/top-5 on eval_split."""
  ft = config.finetune
  setup = make_setup(config, workdir)
  pre, mesh = setup.pretrained, setup.mesh
  validate_finetune(config, head_layer_count(pre.model_config))
  num_labels = input_pipeline.label_fraction_size(config, data_dir=setup.data_dir,
                                                  label_fraction=ft.label_fraction)
  steps_per_epoch, total_steps = plan_steps(ft, num_labels, "finetune")
  tx, schedule = supervised_optim.create_optimizer(
      ft.optim, batch_size=ft.batch_size, num_examples=num_labels, total_steps=total_steps,
      fine_tune_after_block=ft.fine_tune_after_block)
  net = FinetuneNet(model_config=pre.model_config.to_dict(),
                    num_classes=setup.info.num_classes,
                    head_layers=ft.from_projection_layer, zero_init_head=ft.zero_init_head,
                    axis_name=AXIS, fine_tune_after_block=ft.fine_tune_after_block)
  variables = finetune_variables(net, pre.variables, config.data.image_size, config.seed)
  state = SupervisedState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                          batch_stats=variables["batch_stats"],
                          opt_state=tx.init(variables["params"]))
  state = ts.replicate(state, mesh)
  step_fn = shard_supervised_step(make_finetune_step(net, tx, schedule), mesh, num_inputs=2)
  inference = net.clone(axis_name=None)
  eval_step = make_eval_step(lambda v, x: inference.apply(v, x, train=False), mesh)

  def evaluate(state):
    acc = evaluate_classifier(eval_step, {"params": state.params,
                                          "batch_stats": state.batch_stats},
                              _eval_batches(config, setup.data_dir), mesh)
    return {"finetune_top1": acc["top1"], "finetune_top5": acc["top5"]}

  def batches(start_step):
    return input_pipeline.create_supervised_dataset(
        with_batch_size(config, ft.batch_size), data_dir=setup.data_dir,
        split=config.train_split, augment=True, label_fraction=ft.label_fraction,
        start_step=start_step).as_numpy_iterator()

  logging.info("Fine-tuning on %d labelled examples (label_fraction %g of %s): %d steps "
               "(%d per epoch), batch %d, from projection layer %d, pretrained step %d",
               num_labels, ft.label_fraction, config.dataset, total_steps, steps_per_epoch,
               ft.batch_size, ft.from_projection_layer, pre.step)
  results = train_then_evaluate(
      "finetune", config, workdir, step_fn, state, None, batches, evaluate,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch, mesh=mesh,
      extras={"finetune_label_fraction": float(ft.label_fraction),
              "finetune_num_labels": num_labels,
              "finetune_epochs": total_steps / steps_per_epoch,
              "finetune_from_projection_layer": ft.from_projection_layer,
              "pretrain_step": pre.step})
  if results is None:
    return {}
  print(metric_log.format_table(results, title=f"Fine-tuning on {ft.label_fraction:g} of "
                                               f"the labels, {config.eval_split} split"))
  return results


# ----------------------------------------------------------------------------------
# kNN.


def knn_eval(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `knn` mode: weighted kNN (config.knn) of the pretrained h on eval_split."""
  validate_knn(config)
  setup = make_setup(config, workdir)
  pre = setup.pretrained
  results = knn_lib.evaluate_knn(models.create_model(pre.model_config), pre.variables,
                                 config, data_dir=setup.data_dir, mesh=setup.mesh,
                                 num_classes=setup.info.num_classes)
  results.update(knn_k=config.knn.k, knn_temperature=config.knn.temperature,
                 pretrain_step=pre.step)
  log = metric_log.MetricLog(workdir)
  try:
    log.write(pre.step, results)
  finally:
    log.close()
  print(metric_log.format_table(results, title=f"Weighted kNN on h, {config.eval_split} "
                                               "split"))
  return results
