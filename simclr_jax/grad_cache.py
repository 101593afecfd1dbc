"""Exact NT-Xent over large batches in bounded memory: the gradient-cache technique.

Contrastive batches are large (the paper's best runs use B = 4096-8192), and NT-Xent
couples every example with every other one, so the batch cannot simply be split into
micro-batches with accumulated gradients. The gradient cache (Gao et al., 2021,
"Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup") splits the
network from the loss instead. It is a transformation of the two functions the plain
step composes, `forward` (images -> heads: z and the probe's logits) and `head_loss`
(heads -> loss), into the gradient of their composition (`chunked_grad`):

  1. embed each of C chunks of the local batch, keeping no activations;
  2. evaluate the loss on all embeddings at once and take its gradient with respect to
     the embeddings (a [2n, d] array, small next to the network's activations);
  3. run each chunk forward again, now under `jax.vjp`, and back-propagate its slice of
     the embedding gradient, summing the parameter gradients over chunks.

Peak memory is one chunk's activations plus the embeddings. The price is a second
forward pass per step (about 1/3 more compute). Measured on one H100
(docs/gradient_cache.md): ResNet-18, B = 2048 at 32 px, XLA's temporary memory 19.6 GB ->
5.7 GB (4 chunks) -> 1.6 GB (16 chunks) for 1.3x and 1.6x the step time. On the CPU
backend (jaxlib 0.10.2) XLA leaves the weight-gradient convolutions inside a loop in a
slow form: there a chunked step is about 10x slower than the unchunked one.

Exactness: the contrastive loss, its metrics and its gradient with respect to the
embeddings are those of the unchunked step for the same embeddings. BatchNorm is the one
difference: every BN layer normalises a chunk with that chunk's own statistics, so the
parameter gradients are the exact gradients of the network whose BN statistics are
computed per chunk, not per batch (docs/gradient_cache.md spells this out).

Chunk layout: chunk c of a device's n pairs holds pairs c, c + C, c + 2C, ... (both
views). Since every device holds a contiguous block of n pairs and C divides n, global
chunk c is then the set of global pairs g with g = c (mod C) whatever the number of
devices: with global BN, the chunked step's result does not depend on the device count.
"""

from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp

Heads = dict[str, jax.Array]  # the network's outputs the loss reads, rows = examples
Forward = Callable[[Any, Any, jax.Array], tuple[Heads, Any]]
HeadLoss = Callable[[Any, Heads, jax.Array], tuple[jax.Array, dict]]


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


def embed_chunks(forward: Forward, params, batch_stats,
                 chunked_images: jax.Array) -> tuple[Heads, Any]:
  """Step 1: `forward` on every chunk in turn, storing only the heads.

  Args:
    chunked_images: [C, 2m, S, S, 3], as `to_chunks` lays them out.

  Returns:
    (heads with a leading chunk axis, e.g. {"z": [C, 2m, d], ...}; the BN running
     statistics after C updates, one per chunk, in chunk order).
  """
  def body(stats, images):
    heads, stats = forward(params, stats, images)
    return stats, heads

  batch_stats, heads = jax.lax.scan(body, batch_stats, chunked_images)
  return heads, batch_stats


def loss_and_grads(head_loss: HeadLoss, params, chunked_heads: Heads, labels: jax.Array):
  """Step 2: head_loss on all chunks' heads at once, put back in batch order.

  Returns ((loss, metrics), (d loss / d params through the terms that read params
  directly, such as an L2 penalty; d loss / d chunked_heads, [C, 2m, ...])).
  """
  def loss_of(params, chunked_heads):
    return head_loss(params, jax.tree.map(from_chunks, chunked_heads), labels)

  return jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(params, chunked_heads)


def backprop_chunks(forward: Forward, params, batch_stats, chunked_images: jax.Array,
                    head_grads: Heads, init_grads: Any) -> Any:
  """Step 3: re-run each chunk under `jax.vjp` and pull its heads' gradient back.

  Args:
    chunked_images: [C, 2m, S, S, 3].
    head_grads: d loss / d heads, with the leading chunk axis.
    init_grads: parameter gradients the chunks' gradients are added to.

  Returns:
    init_grads + sum over chunks of (d heads_c / d params)^T head_grads_c.
  """
  def body(acc, inputs):
    images, cotangent = inputs
    # Train mode normalises with the chunk's own statistics, so the running averages
    # passed in do not change the outputs: this recomputes step 1's heads exactly.
    _, pullback, _ = jax.vjp(lambda p: forward(p, batch_stats, images), params,
                             has_aux=True)
    (grads,) = pullback(cotangent)
    return jax.tree.map(jnp.add, acc, grads), None

  grads, _ = jax.lax.scan(body, init_grads, (chunked_images, head_grads))
  return grads


def chunked_grad(forward: Forward, head_loss: HeadLoss, chunks: int) -> Callable:
  """The gradient of head_loss(params, forward(params, ...)) one chunk at a time.

  forward: `(params, batch_stats, images) -> (heads, batch_stats)`, train mode;
  head_loss: `(params, heads, labels) -> (loss, metrics)` (train_step.make_forward and
  make_head_loss). Returns `(params, batch_stats, images [2n, S, S, 3], labels [2n]) ->
  (grads, (batch_stats, metrics))`, what jax.grad of the composition gives, per device
  inside the mapped step: grads are this device's d(sum of all devices' losses)/d(params)
  of the network whose BN statistics are computed per chunk of 2n/C images (per global
  chunk of 2N/C with global BN); the BN running statistics are updated once per chunk.
  `chunks` = C must divide n.
  """
  if chunks > 1 and jax.default_backend() == "cpu":
    logging.warning("loss.chunks = %d on the CPU backend: XLA runs the weight-gradient "
                    "convolutions inside the chunk loop ~25x slower than outside it; "
                    "expect a much slower step (docs/gradient_cache.md)", chunks)

  def grad_fn(params, batch_stats, images, labels):
    if labels.shape[0] != images.shape[0]:
      raise ValueError(f"images ({images.shape[0]} rows) and labels ({labels.shape[0]}) "
                       "must both hold 2n rows")
    chunked = to_chunks(images, chunks)
    heads, new_stats = embed_chunks(forward, params, batch_stats, chunked)
    (_, metrics), (direct_grads, head_grads) = loss_and_grads(head_loss, params, heads,
                                                              labels)
    grads = backprop_chunks(forward, params, batch_stats, chunked, head_grads, direct_grads)
    return grads, (new_stats, metrics)

  return grad_fn
