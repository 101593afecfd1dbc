"""The `linear_eval` mode: a linear classifier on the frozen pretrained encoder.

Protocol (Chen et al. 2020, Appendix B.5, official code): frozen encoder (BN running
averages), zero-initialised linear classifier on h, Nesterov momentum SGD, crop + flip
only, no warm-up, cosine decay. `linear_eval.cached_features` is a fast path that
extracts h once without augmentation (logged under its own metric names).
"""

import time
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from simclr_jax import config_lib
from simclr_jax import eval_setup
from simclr_jax import data
from simclr_jax import knn as knn_lib
from simclr_jax import loop
from simclr_jax import metric_log
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import steps as steps_lib
from simclr_jax import supervised
from simclr_jax import supervised_optim
from simclr_jax.parallel import AXIS
from simclr_jax.supervised import Batch, SupervisedState

ConfigDict = ml_collections.ConfigDict

CACHED_PREFIX = "linear_eval_cached_"


def linear_classifier(num_classes: int, zero_init: bool = True) -> nn.Dense:
  """The linear-evaluation classifier: Dense with a zero bias; kernel zero (official
  linear evaluation) or N(0, 0.01^2)."""
  return nn.Dense(num_classes, kernel_init=supervised.head_init(zero_init),
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
      return supervised.cross_entropy_and_top1(logits, batch["label"])

    (loss, top1), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    _, params, opt_state = parallel.mean_update(tx, grads, state.params, state.opt_state)
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


def linear_eval(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `linear_eval` mode; returns (and logs) the final top-1/top-5 on eval_split."""
  setup = eval_setup.make_setup(config, workdir)
  if config.linear_eval.cached_features:
    return _linear_eval_cached(setup)
  le, mesh, pre = config.linear_eval, setup.mesh, setup.pretrained
  steps_per_epoch, total_steps = steps_lib.run_length(le, setup.info.num_train_examples,
                                                      prefix="linear_eval.")
  tx, schedule = supervised_optim.create_optimizer(
      le.optim, batch_size=le.batch_size, num_examples=setup.info.num_train_examples,
      total_steps=total_steps, whole_tree_is_classifier=True)
  model = models.create_model(pre.model_config)
  config_lib.check_projection_layer("linear_eval.from_projection_layer",
                                    le.from_projection_layer,
                                    eval_setup.head_layer_count(pre.model_config))
  featurize = encoder_featurize(model, le.from_projection_layer)
  classifier = linear_classifier(setup.info.num_classes, le.zero_init_head)
  feature_dim = jax.eval_shape(featurize, pre.variables, jax.ShapeDtypeStruct(
      (1, config.data.image_size, config.data.image_size, 3), jnp.float32)).shape[-1]
  state = parallel.replicate(init_classifier_state(classifier, feature_dim, tx), mesh)
  frozen = parallel.replicate(pre.variables, mesh)
  step_fn = supervised.shard_supervised_step(
      make_linear_step(featurize, classifier, tx, schedule), mesh, num_inputs=3)
  eval_step = supervised.make_eval_step(
      lambda v, x: classifier.apply({"params": v["classifier"]}, featurize(v["encoder"], x)),
      mesh)

  def evaluate(state):
    acc = supervised.evaluate_classifier(
        eval_step, {"encoder": frozen, "classifier": state.params},
        eval_setup.eval_batches(config, setup.data_dir), mesh)
    return {"linear_eval_top1": acc["top1"], "linear_eval_top5": acc["top5"]}

  def batches(start_step):
    return data.create_supervised_dataset(
        eval_setup.with_batch_size(config, le.batch_size), data_dir=setup.data_dir,
        split=config.train_split, augment=True, start_step=start_step).as_numpy_iterator()

  logging.info("Linear evaluation: %d steps (%d per epoch), batch %d, frozen encoder of "
               "step %d", total_steps, steps_per_epoch, le.batch_size, pre.step)
  results = supervised.train_then_evaluate(
      "linear_eval", config, workdir, step_fn, state, frozen, batches, evaluate,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch, mesh=mesh,
      extras={"linear_eval_epochs": total_steps / steps_per_epoch,
              "pretrain_step": pre.step})
  if results is None:
    return {}
  print(metric_log.format_table(results, title="Linear evaluation (frozen encoder, crop + "
                                               f"flip), {config.eval_split} split"))
  return results


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


def _linear_eval_cached(setup: eval_setup.Setup) -> dict[str, float]:
  """Fast path: h of every train image extracted once (centre crop, no augmentation)."""
  config, mesh, pre, le = setup.config, setup.mesh, setup.pretrained, setup.config.linear_eval
  model = models.create_model(pre.model_config)
  variables = parallel.replicate(pre.variables, mesh)
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
  steps_per_epoch, total_steps = steps_lib.run_length(le, len(train_x), prefix="linear_eval.")
  tx, schedule = supervised_optim.create_optimizer(
      le.optim, batch_size=le.batch_size, num_examples=len(train_x),
      total_steps=total_steps, whole_tree_is_classifier=True)
  classifier = linear_classifier(setup.info.num_classes, le.zero_init_head)
  state = parallel.replicate(init_classifier_state(classifier, train_x.shape[1], tx), mesh)
  step_fn = supervised.shard_supervised_step(
      make_linear_step(lambda _, x: x, classifier, tx, schedule), mesh, num_inputs=3)
  log = metric_log.MetricLog(setup.workdir)
  try:
    # Minutes at most once the features are cached: not checkpointed.
    cadence = loop.Cadence(total_steps, steps_per_epoch, le.batch_size,
                           config.log_every_steps)
    state, done, _ = loop.train(
        lambda s, batch: step_fn(s, {}, batch), state,
        cached_batches(train_x, train_y, le.batch_size, config.seed), cadence, mesh=mesh,
        log=log, checked=("train_loss",), prefix=CACHED_PREFIX, what="linear_eval")
    if not done:
      return {}
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
