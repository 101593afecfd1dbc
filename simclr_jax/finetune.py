"""The `finetune` mode: the pretrained encoder trained with a fresh linear head.

Protocol (Chen et al. 2020, Appendix B.6; SimCLR v2): every encoder layer after
`finetune.fine_tune_after_block` (and optionally the first projection-head layers) trained
with a fresh linear head on a fraction of the labels, BN in training mode with
statistics over the global batch.
"""

from typing import Any, Callable

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
from simclr_jax import metric_log
from simclr_jax import parallel
from simclr_jax import steps as steps_lib
from simclr_jax import supervised
from simclr_jax import supervised_optim
from simclr_jax.models.heads import ProjectionHead
from simclr_jax.models.resnet import ResNet
from simclr_jax.models.simclr import parse_dtype
from simclr_jax.parallel import AXIS
from simclr_jax.supervised import Batch, SupervisedState

ConfigDict = ml_collections.ConfigDict

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
    return nn.Dense(self.num_classes, kernel_init=supervised.head_init(self.zero_init_head),
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
        dense = nn.Dense(net.num_classes, kernel_init=supervised.head_init(net.zero_init_head),
                         dtype=jnp.float32, param_dtype=jnp.float32)
        tree[name] = dense.init(jax.random.PRNGKey(seed), jnp.zeros((1, in_dim)))["params"]
        continue
      source = pretrained_variables[kind][name]
      if name == "head":  # only the layers the net keeps
        source = {k: v for k, v in source.items() if k in expected}
      _check_same_shapes(expected, source, f"{kind}/{name}")
      tree[name] = source
    out[kind] = tree
  return out


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
      loss, top1 = supervised.cross_entropy_and_top1(logits, batch["label"])
      return loss, (mutated["batch_stats"], top1)

    (loss, (batch_stats, top1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    _, params, opt_state = parallel.mean_update(tx, grads, state.params, state.opt_state)
    if net.axis_name is None:
      batch_stats = jax.lax.pmean(batch_stats, AXIS)
    metrics = jax.lax.pmean({"train_loss": loss, "train_top1": top1}, AXIS)
    metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  return step


def finetune(config: ConfigDict, workdir: str) -> dict[str, float]:
  """The `finetune` mode; returns (and logs) the final top-1/top-5 on eval_split."""
  ft = config.finetune
  setup = eval_setup.make_setup(config, workdir)
  pre, mesh = setup.pretrained, setup.mesh
  config_lib.check_projection_layer("finetune.from_projection_layer",
                                    ft.from_projection_layer,
                                    eval_setup.head_layer_count(pre.model_config))
  num_labels = data.label_fraction_size(config, data_dir=setup.data_dir,
                                                  label_fraction=ft.label_fraction)
  steps_per_epoch, total_steps = steps_lib.run_length(ft, num_labels, prefix="finetune.")
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
  state = parallel.replicate(state, mesh)
  step_fn = supervised.shard_supervised_step(make_finetune_step(net, tx, schedule), mesh,
                                             num_inputs=2)
  inference = net.clone(axis_name=None)
  eval_step = supervised.make_eval_step(lambda v, x: inference.apply(v, x, train=False), mesh)

  def evaluate(state):
    acc = supervised.evaluate_classifier(
        eval_step, {"params": state.params, "batch_stats": state.batch_stats},
        eval_setup.eval_batches(config, setup.data_dir), mesh)
    return {"finetune_top1": acc["top1"], "finetune_top5": acc["top5"]}

  def batches(start_step):
    return data.create_supervised_dataset(
        eval_setup.with_batch_size(config, ft.batch_size), data_dir=setup.data_dir,
        split=config.train_split, augment=True, label_fraction=ft.label_fraction,
        start_step=start_step).as_numpy_iterator()

  logging.info("Fine-tuning on %d labelled examples (label_fraction %g of %s): %d steps "
               "(%d per epoch), batch %d, from projection layer %d, pretrained step %d",
               num_labels, ft.label_fraction, config.dataset, total_steps, steps_per_epoch,
               ft.batch_size, ft.from_projection_layer, pre.step)
  results = supervised.train_then_evaluate(
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
