"""The SimCLR pretraining step: augment -> encode -> project -> gather -> NT-Xent -> LARS.

The step is written per device, in the pmap programming model: it sees its local share
of the batch and talks to the other devices through collectives over `AXIS` (global BN,
the embedding gather inside `nt_xent`, gradient and metric means). `shard_train_step`
maps it over a 1-D device mesh (parallel.data_parallel).

The loss is two functions, split where the gradient cache cuts it: `make_forward`
(images -> heads: encoder f, projection head g, online probe) and `make_head_loss`
(heads -> NT-Xent over the gathered projections + the probe's terms). The plain step
differentiates head_loss(forward(...)); with config.loss.chunks > 1 grad_cache.py
transforms the same two functions.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from simclr_jax import blur
from simclr_jax import grad_cache
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.parallel import AXIS

Batch = dict[str, jax.Array]  # image1, image2: [n, S, S, 3] float32; label: [n] int32
Metrics = dict[str, jax.Array]
Heads = grad_cache.Heads  # "z": [2n, d] projections; "logits": [2n, classes] online probe


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
  return 0.5 * weight_decay * jnp.sum(jnp.square(params["classifier"]["kernel"]))


def probe_loss_and_accuracy(logits: jax.Array, labels: jax.Array):
  """Mean softmax cross-entropy and top-1 accuracy of the online probe."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, accuracy


def make_forward(model) -> Callable[[Any, Any, jax.Array], tuple[Heads, Any]]:
  """`(params, batch_stats, images [B, S, S, 3]) -> (heads, batch_stats)`: encode, project.

  Train mode: every BN normalises with the statistics of `images` (and of the other
  devices' images with global BN). heads = {"z": [B, d] projections g(f(x)), "logits":
  [B, classes] of the online probe on stop_gradient(h), when the model has one};
  batch_stats: the BN running statistics updated with this batch.
  """
  def forward(params, batch_stats, images):
    out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, images,
                               train=True, mutable=["batch_stats"])
    heads = {k: out[k] for k in ("z", "logits") if k in out}
    return heads, mutated.get("batch_stats", batch_stats)

  return forward


def make_head_loss(config: ml_collections.ConfigDict) -> Callable:
  """`(params, heads, labels [2n]) -> (total, metrics)`: the loss given the heads.

  heads hold view 1 of the local n pairs, then view 2 (rows of `make_forward`'s output).
  total = NT-Xent of z (this device's 2n anchors against all devices' 2N candidates,
  gathered inside `losses.nt_xent`: call it per device in the mapped step) + the online
  probe's cross-entropy + its L2 term (the one term that reads `params` directly).
  """
  weight_decay = config.optim.weight_decay

  def head_loss(params, heads: Heads, labels: jax.Array):
    z_a, z_b = jnp.split(heads["z"], 2)
    loss, aux = losses.nt_xent(z_a, z_b, temperature=config.loss.temperature,
                               axis_name=AXIS, official_scaling=config.loss.official_scaling,
                               hidden_norm=config.loss.hidden_norm)
    metrics = {"loss": loss, **aux}
    total = loss
    if "logits" in heads:
      probe_loss, probe_acc = probe_loss_and_accuracy(heads["logits"], labels)
      total = total + probe_loss + classifier_l2(params, weight_decay)
      metrics.update(probe_loss=probe_loss, probe_acc=probe_acc)
    return total, metrics

  return head_loss


def make_grad_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """`(params, batch_stats, images [2n, ...], labels [2n]) -> (grads, (batch_stats, metrics))`.

  The gradient of head_loss(forward(...)): grads are this device's d(sum of all devices'
  losses)/d(params) (see `make_train_step`). With config.loss.chunks = C > 1 the same
  two functions go through the gradient cache (grad_cache.py): one chunk's activations
  at a time, BN statistics per chunk.
  """
  forward, head_loss = make_forward(model), make_head_loss(config)
  if config.loss.chunks > 1:
    return grad_cache.chunked_grad(forward, head_loss, config.loss.chunks)

  def loss_fn(params, batch_stats, images, labels):
    heads, batch_stats = forward(params, batch_stats, images)
    total, metrics = head_loss(params, heads, labels)
    return total, (batch_stats, metrics)

  return jax.grad(loss_fn, has_aux=True)


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict) -> Callable[[TrainState, Batch],
                                                                   tuple[TrainState, Metrics]]:
  """Returns the per-device step `(state, local_batch) -> (state, metrics)`.

  `model` must have been built with `axis_name=AXIS` for global BN (with
  `config.model.global_bn = False` it has none and its statistics are averaged after
  the step). Every returned metric is already averaged over devices.
  """
  aug = config.augment
  blur_here = aug.blur and aug.blur_on == "device"
  grad_fn = make_grad_fn(model, config)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    # Augment: the host made both views; the blur may run here, on the device.
    # Both views in one forward pass, so BN normalises over all 2N views, as the paper.
    images = jnp.concatenate([batch["image1"], batch["image2"]])
    labels = jnp.concatenate([batch["label"], batch["label"]])
    if blur_here:
      rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                               jax.lax.axis_index(AXIS))
      images = blur.random_gaussian_blur(rng, images, prob=aug.blur_prob,
                                         sigma_range=tuple(aug.blur_sigma_range),
                                         kernel_fraction=aug.blur_kernel_fraction)
    # Encode, project, gather, loss, and back.
    grads, (batch_stats, metrics) = grad_fn(state.params, state.batch_stats, images, labels)
    # LARS on the device-mean gradient.
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
