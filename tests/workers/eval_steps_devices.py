"""Linear-evaluation (2 and 8 devices) and fine-tuning (8) steps vs. a plain reference.

Three steps on one global batch of 16 images, sharded over k devices (shard_map,
pmean of gradients, global BN), and once without shard_map or collectives on the whole
batch; saves the resulting parameters, BN statistics and losses.
"""

import sys

from simclr_jax import platform
platform.configure_xla_flags()
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import base
from simclr_jax import finetune

from simclr_jax import linear_eval

from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import supervised
from simclr_jax import supervised_optim
from tests import pretrained_fixture

STEPS, BATCH, SIZE, CLASSES = 3, 16, 8, 5


def data():
  rng = np.random.default_rng(0)
  return [{"image": rng.uniform(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
           "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)} for _ in range(STEPS)]


def optimizer(wd):
  cfg = base.linear_eval_config().linear_eval.optim
  cfg.weight_decay = wd
  return supervised_optim.create_optimizer(cfg, batch_size=BATCH, num_examples=2 * BATCH,
                                           total_steps=6)


def linear_runs(config, pretrained, batches):
  model = models.create_model(config.model)
  featurize = linear_eval.encoder_featurize(model)
  classifier = linear_eval.linear_classifier(CLASSES)
  tx, schedule = optimizer(1e-2)
  feature_dim = models.feature_dim(18, 0.125)
  out = {}
  for k in (2, 8):
    mesh = parallel.make_mesh(jax.devices()[:k])
    state = parallel.replicate(linear_eval.init_classifier_state(classifier, feature_dim, tx), mesh)
    step = supervised.shard_supervised_step(
        linear_eval.make_linear_step(featurize, classifier, tx, schedule), mesh, num_inputs=3)
    frozen = parallel.replicate(pretrained, mesh)
    losses = []
    for batch in batches:
      state, metrics = step(state, frozen, parallel.shard_batch(batch, mesh))
      losses.append(float(metrics["train_loss"]))
    out[k] = (losses, jax.device_get(state.params), {})
  # Reference: whole batch, no shard_map.
  state = linear_eval.init_classifier_state(classifier, feature_dim, tx)
  params, opt_state, losses = state.params, state.opt_state, []

  @jax.jit
  def ref_step(params, opt_state, batch):
    h = model.apply(pretrained, batch["image"], train=False, method="encode")
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        classifier.apply({"params": p}, h), batch["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for batch in batches:
    params, opt_state, loss = ref_step(params, opt_state, batch)
    losses.append(float(loss))
  out["ref"] = (losses, jax.device_get(params), {})
  return out


def finetune_runs(config, pretrained, batches, head_layers):
  tx, schedule = optimizer(1e-3)
  out = {}
  for k in (8,):
    mesh = parallel.make_mesh(jax.devices()[:k])
    net = finetune.FinetuneNet(model_config=config.model.to_dict(), num_classes=CLASSES,
                               head_layers=head_layers, axis_name=parallel.AXIS)
    variables = finetune.finetune_variables(net, pretrained, SIZE, seed=0)
    state = supervised.SupervisedState(step=jnp.zeros((), jnp.int32),
                                     params=variables["params"],
                                     batch_stats=variables["batch_stats"],
                                     opt_state=tx.init(variables["params"]))
    state = parallel.replicate(state, mesh)
    step = supervised.shard_supervised_step(finetune.make_finetune_step(net, tx, schedule),
                                          mesh, num_inputs=2)
    losses = []
    for batch in batches:
      state, metrics = step(state, parallel.shard_batch(batch, mesh))
      losses.append(float(metrics["train_loss"]))
    out[k] = (losses, jax.device_get(state.params), jax.device_get(state.batch_stats))
  # Reference: whole batch, BN over the whole batch, no collectives.
  net = finetune.FinetuneNet(model_config=config.model.to_dict(), num_classes=CLASSES,
                             head_layers=head_layers, axis_name=None)
  variables = finetune.finetune_variables(net, pretrained, SIZE, seed=0)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state, losses = tx.init(params), []

  @jax.jit
  def ref_step(params, stats, opt_state, batch):
    def loss_fn(p):
      logits, mutated = net.apply({"params": p, "batch_stats": stats}, batch["image"],
                                  train=True, mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return ce, mutated["batch_stats"]
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  for batch in batches:
    params, stats, opt_state, loss = ref_step(params, stats, opt_state, batch)
    losses.append(float(loss))
  out["ref"] = (losses, jax.device_get(params), jax.device_get(stats))
  out["init"] = ([np.nan] * STEPS, variables["params"], variables["batch_stats"])
  return out


def main(out_path, pretrain_dir):
  config = pretrained_fixture.tiny_config(head_num_layers=3, image_size=SIZE)
  pretrained = pretrained_fixture.make_checkpoint(pretrain_dir, config)
  batches = data()
  flat = {}
  for name, runs in (("linear", linear_runs(config, pretrained, batches)),
                     ("finetune1", finetune_runs(config, pretrained, batches, head_layers=1))):
    for key, (losses, params, stats) in runs.items():
      flat[f"{name}/{key}/loss"] = np.asarray(losses)
      for path, leaf in jax.tree_util.tree_leaves_with_path({"params": params,
                                                             "stats": stats}):
        flat[f"{name}/{key}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  np.savez(out_path, **flat)


if __name__ == "__main__":
  main(*sys.argv[1:])
