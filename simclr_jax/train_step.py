"""The SimCLR pretraining step: augment -> encode -> project -> gather -> NT-Xent -> LARS.

The step is written per device, in the pmap programming model: it sees its local share
of the batch and talks to the other devices through collectives over `AXIS` (global BN,
the embedding gather inside `nt_xent`, gradient and metric means). `shard_train_step`
maps it over a 1-D device mesh (parallel.data_parallel).
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from simclr_jax import blur
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.parallel import AXIS

Batch = dict[str, jax.Array]  # image1, image2: [n, S, S, 3] float32; label: [n] int32
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
  """Everything a pretraining run carries from step to step (and checkpoints)."""
  step: jax.Array  # int32 scalar: number of updates applied
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2] raw key; per-step keys are folded from it


def create_train_state(rng: jax.Array, model, tx: optax.GradientTransformation,
                       image_size: int) -> TrainState:
  """Initialises parameters, BN statistics and optimiser state (host-side, unsharded)."""
  init_rng, state_rng = jax.random.split(rng)
  dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
  init = jax.jit(lambda r: model.init(r, dummy, train=False))
  options = {}
  if jax.default_backend() == "cpu":
    # Runs once; LLVM-optimising its many RNG kernels took ~5x longer (28 s vs 6 s for a
    # ResNet-18) than the unoptimised program needs to run.
    options = {"xla_backend_optimization_level": 0}
  variables = init.lower(init_rng).compile(compiler_options=options)(init_rng)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=state_rng)


def classifier_l2(params, weight_decay: float) -> jax.Array:
  """L2 penalty of the online probe: LARS masks its weight decay off (official code)."""
  if "classifier" not in params:
    return jnp.zeros((), jnp.float32)
  kernel = params["classifier"]["kernel"]
  return 0.5 * weight_decay * jnp.sum(jnp.square(kernel))


def probe_loss_and_accuracy(logits: jax.Array, labels: jax.Array):
  """Mean softmax cross-entropy and top-1 accuracy of the online probe."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, accuracy


def make_loss_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """`(params, batch_stats, images [2n,...], labels [2n]) -> (total, (batch_stats, metrics))`.

  images holds view 1 of the local batch then view 2. The total adds the online probe's
  cross-entropy (on stop_gradient(h), inside the model) and its L2 term to NT-Xent.
  """
  weight_decay = config.optim.weight_decay

  def loss_fn(params, batch_stats, images, labels):
    out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, images,
                               train=True, mutable=["batch_stats"])
    z_a, z_b = jnp.split(out["z"], 2)
    loss, aux = losses.nt_xent(z_a, z_b, temperature=config.loss.temperature,
                               axis_name=AXIS, official_scaling=config.loss.official_scaling,
                               hidden_norm=config.loss.hidden_norm)
    metrics = {"loss": loss, **aux}
    total = loss
    if "logits" in out:
      probe_loss, probe_acc = probe_loss_and_accuracy(out["logits"], labels)
      total = total + probe_loss + classifier_l2(params, weight_decay)
      metrics.update(probe_loss=probe_loss, probe_acc=probe_acc)
    return total, (mutated["batch_stats"], metrics)

  return loss_fn


def make_grad_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """`(params, batch_stats, images, labels) -> (grads, (batch_stats, metrics))`.

  grads are this device's d(sum of all devices' losses)/d(params); see `make_train_step`.
  """
  return jax.grad(make_loss_fn(model, config), has_aux=True)


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict,
                    grad_fn: Callable | None = None) -> Callable[[TrainState, Batch],
                                                                 tuple[TrainState, Metrics]]:
  """Returns the per-device step `(state, local_batch) -> (state, metrics)`.

  `model` must have been built with `axis_name=AXIS` for global BN (with
  `config.model.global_bn = False` it has none and its statistics are averaged after
  the step). Every returned metric is already averaged over devices.
  """
  aug = config.augment
  blur_here = aug.blur and aug.blur_on == "device"
  grad_fn = make_grad_fn(model, config) if grad_fn is None else grad_fn

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    # Both views in one forward pass, so BN normalises over all 2N views, as the paper.
    images = jnp.concatenate([batch["image1"], batch["image2"]])
    labels = jnp.concatenate([batch["label"], batch["label"]])
    if blur_here:
      rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                               jax.lax.axis_index(AXIS))
      images = blur.random_gaussian_blur(rng, images, prob=aug.blur_prob,
                                         sigma_range=tuple(aug.blur_sigma_range),
                                         kernel_fraction=aug.blur_kernel_fraction)
    grads, (batch_stats, metrics) = grad_fn(state.params, state.batch_stats, images, labels)
    grads, params, opt_state = parallel.mean_update(tx, grads, state.params, state.opt_state)
    if not config.model.global_bn:
      batch_stats = jax.lax.pmean(batch_stats, AXIS)
    metrics = jax.lax.pmean(metrics, AXIS)
    metrics["learning_rate"] = schedule(state.step)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)  # a non-finite update shows here
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    return new_state, metrics

  return step


def shard_train_step(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
  """Maps a per-device step over `mesh`: state replicated (and donated), batch split
  along AXIS; every output is made identical across devices (pmean) by the step."""
  return parallel.data_parallel(step, mesh, in_specs=(parallel.REPLICATED, parallel.SPLIT),
                                out_specs=(parallel.REPLICATED, parallel.REPLICATED),
                                donate_argnums=0)


def create_optimizer(config: ml_collections.ConfigDict, num_examples: int,
                     total_steps: int):
  """The pretraining optimiser and its learning-rate schedule (num_examples: N of an
  epoch, for the warm-up length)."""
  return optim.create_optimizer(config.optim, batch_size=config.batch_size,
                                num_examples=num_examples, total_steps=total_steps)
