"""Exact NT-Xent over large batches in bounded memory: the gradient-cache technique.

Contrastive batches are large (the paper's best runs use B = 4096-8192), and NT-Xent
couples every example with every other one, so the batch cannot simply be split into
micro-batches with accumulated gradients. The gradient cache (Gao et al., 2021,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup") splits the
network from the loss instead:

  1. embed each of C chunks of the local batch, keeping no activations;
  2. evaluate the loss on all embeddings at once and take its gradient with respect to
     the embeddings (a [2n, d] array, small next to the network's activations);
  3. run each chunk forward again, now under `jax.vjp`, and back-propagate its slice of
     the embedding gradient, summing the parameter gradients over chunks.

Peak memory is one chunk's activations plus the embeddings. The price is a second
forward pass per step (about 1/3 more compute). Measured on one H100 (README,
"Batch-size scaling"): ResNet-18, B = 2048 at 32 px, XLA's temporary memory 19.6 GB ->
5.7 GB (4 chunks) -> 1.6 GB (16 chunks) for 1.3x and 1.6x the step time. On the CPU
backend (jaxlib 0.10.2) XLA leaves the weight-gradient convolutions inside a loop in a
slow form: there a chunked step is about 10x slower than the unchunked one (README,
"Batch-size scaling").

Exactness: the contrastive loss, its metrics and its gradient with respect to the
embeddings are those of the unchunked step for the same embeddings. BatchNorm is the one
difference: every BN layer normalises a chunk with that chunk's own statistics, so the
parameter gradients are the exact gradients of the network whose BN statistics are
computed per chunk, not per batch (README "Batch-size scaling" spells this out).

Chunk layout: chunk c of a device's n pairs holds pairs c, c + C, c + 2C, ... (both
views). Since every device holds a contiguous block of n pairs and C divides n, global
chunk c is then the set of global pairs g with g = c (mod C) whatever the number of
devices: with global BN, the chunked step's result does not depend on the device count.
"""

from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax import train_step as ts

Heads = dict[str, jax.Array]  # "z": [.., 2m, d]; "logits": [.., 2m, classes] (online probe)


def check_chunks(num_pairs: int, chunks: int) -> None:
  """Raises ValueError unless `chunks` is an int >= 1 that divides `num_pairs`."""
  if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
    raise ValueError(f"config.loss.chunks must be an int >= 1, got {chunks!r}")
  if num_pairs % chunks:
    raise ValueError(f"config.loss.chunks = {chunks} must divide the per-device number of "
                     f"pairs ({num_pairs})")


def to_chunks(x: jax.Array, chunks: int) -> jax.Array:
  """[2n, ...] (view 1 rows, then view 2 rows) -> [C, 2n/C, ...].

  Chunk c holds pairs i = c, c + C, ... : view 1 of them, then view 2 in the same order.
  """
  if x.shape[0] % 2:
    raise ValueError(f"expected 2n rows (two views of n pairs), got {x.shape[0]}")
  n = x.shape[0] // 2
  check_chunks(n, chunks)
  rest = x.shape[1:]
  views = x.reshape(2, n // chunks, chunks, *rest)  # [view, j, c]: pair j * C + c
  return jnp.moveaxis(views, 2, 0).reshape(chunks, 2 * (n // chunks), *rest)


def from_chunks(y: jax.Array) -> jax.Array:
  """Inverse of `to_chunks`: [C, 2m, ...] -> [2 C m, ...] in the original row order."""
  chunks, two_m = y.shape[:2]
  rest = y.shape[2:]
  views = y.reshape(chunks, 2, two_m // 2, *rest)  # [c, view, j]
  return jnp.moveaxis(views, 0, 2).reshape(chunks * two_m, *rest)


def _forward(model, params, batch_stats, images) -> tuple[Heads, Any]:
  """Train-mode forward of one chunk: ({"z", "logits"?}, updated BN running stats)."""
  out, mutated = model.apply({"params": params, "batch_stats": batch_stats}, images,
                             train=True, mutable=["batch_stats"])
  heads = {k: out[k] for k in ("z", "logits") if k in out}
  return heads, mutated.get("batch_stats", batch_stats)


def embed_chunks(model, params, batch_stats, chunked_images: jax.Array) -> tuple[Heads, Any]:
  """Step 1: forward every chunk in turn, storing only the outputs.

  Args:
    chunked_images: [C, 2m, S, S, 3], as `to_chunks` lays them out.

  Returns:
    ({"z": [C, 2m, d], "logits": [C, 2m, classes] if the model has the online probe},
     BN running statistics after C updates, one per chunk, in chunk order).
  """
  def body(stats, images):
    heads, stats = _forward(model, params, stats, images)
    return stats, heads

  batch_stats, heads = jax.lax.scan(body, batch_stats, chunked_images)
  return heads, batch_stats


def make_head_loss_fn(config: ml_collections.ConfigDict) -> Callable:
  """`(heads [C, 2m, ..], labels [2n]) -> (loss without the L2 term, metrics)`.

  The same terms and metrics as `train_step.make_loss_fn`, on the embeddings of all
  chunks together: NT-Xent over this device's 2n anchors against all devices' 2N
  candidates (call it inside the mapped step), plus the online probe's cross-entropy.
  """
  def head_loss(heads: Heads, labels: jax.Array):
    merged = jax.tree.map(from_chunks, heads)
    z_a, z_b = jnp.split(merged["z"], 2)
    loss, aux = losses.nt_xent(z_a, z_b, temperature=config.loss.temperature,
                               axis_name=parallel.AXIS,
                               official_scaling=config.loss.official_scaling,
                               hidden_norm=config.loss.hidden_norm)
    metrics = {"loss": loss, **aux}
    total = loss
    if "logits" in merged:
      probe_loss, probe_acc = ts.probe_loss_and_accuracy(merged["logits"], labels)
      total = total + probe_loss
      metrics.update(probe_loss=probe_loss, probe_acc=probe_acc)
    return total, metrics

  return head_loss


def backprop_chunks(model, params, batch_stats, chunked_images: jax.Array,
                    head_grads: Heads, init_grads: Any) -> Any:
  """Step 3: re-run each chunk under `jax.vjp` and pull its embedding gradient back.

  Args:
    chunked_images: [C, 2m, S, S, 3].
    head_grads: d loss / d heads, {"z": [C, 2m, d], "logits": ...}.
    init_grads: parameter gradients the chunks' gradients are added to.

  Returns:
    init_grads + sum over chunks of (d heads_c / d params)^T head_grads_c.
  """
  def body(acc, inputs):
    images, cotangent = inputs
    # Train mode normalises with the chunk's own statistics, so the running averages
    # passed in do not change the outputs: this recomputes step 1's heads exactly.
    _, pullback, _ = jax.vjp(lambda p: _forward(model, p, batch_stats, images), params,
                             has_aux=True)
    (grads,) = pullback(cotangent)
    return jax.tree.map(jnp.add, acc, grads), None

  grads, _ = jax.lax.scan(body, init_grads, (chunked_images, head_grads))
  return grads


def make_chunked_grad_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """A drop-in for `train_step.make_grad_fn` that holds one chunk's activations at a time.

  `(params, batch_stats, images [2n, S, S, 3], labels [2n]) -> (grads, (batch_stats,
  metrics))`, per device inside the shard_map'ed step (check_vma=False): grads are this
  device's d(sum of all devices' losses)/d(params) with the network's BN statistics
  computed per chunk of 2n/C images (per global chunk of 2N/C with global BN); the BN
  running statistics are updated once per chunk; metrics as `train_step.make_loss_fn`.
  config.loss.chunks = C must divide n.
  """
  chunks = config.loss.chunks
  weight_decay = config.optim.weight_decay
  head_loss = make_head_loss_fn(config)
  if chunks > 1 and jax.default_backend() == "cpu":
    logging.warning("loss.chunks = %d on the CPU backend: XLA runs the weight-gradient "
                    "convolutions inside the chunk loop ~25x slower than outside it; "
                    "expect a much slower step (README, 'Batch-size scaling')", chunks)

  def grad_fn(params, batch_stats, images, labels):
    if labels.shape[0] != images.shape[0]:
      raise ValueError(f"images ({images.shape[0]} rows) and labels ({labels.shape[0]}) "
                       "must both hold 2n rows")
    chunked = to_chunks(images, chunks)
    heads, new_stats = embed_chunks(model, params, batch_stats, chunked)
    (_, metrics), head_grads = jax.value_and_grad(head_loss, has_aux=True)(heads, labels)
    # The probe's L2 term depends on the parameters directly, not through the chunks.
    l2_grads = jax.grad(ts.classifier_l2)(params, weight_decay)
    grads = backprop_chunks(model, params, batch_stats, chunked, head_grads, l2_grads)
    return grads, (new_stats, metrics)

  return grad_fn
