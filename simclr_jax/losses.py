"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR.

Chen et al., ICML 2020, Eq. (1): for a positive pair (i, j) among 2N augmented examples,

  l(i, j) = -log( exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau) ),

with sim the cosine similarity, and L = 1/(2N) sum of l over all 2N anchors (both
directions of every pair), so every anchor has 2N - 2 negatives.
"""

import jax
import jax.numpy as jnp

# Finite stand-in for -inf on the self-similarity logit: exp() of it underflows to 0, and
# unlike -inf it never yields inf - inf = NaN in logsumexp or the entropy.
_MASK_VALUE = -1e9
# tf.math.l2_normalize's default: vectors shorter than 1e-6 are scaled by 1e6, not divided
# by their norm, so a zero vector maps to zero with a finite gradient.
_NORM_EPS_SQ = 1e-12


def _l2_normalize(z: jax.Array) -> jax.Array:
  """Scales each row of z [n, d] to unit Euclidean length (zero rows stay zero)."""
  sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  return z * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS_SQ))


def nt_xent(
    z_a: jax.Array,
    z_b: jax.Array,
    *,
    temperature: float,
    axis_name: str | None = None,
    official_scaling: bool = False,
    hidden_norm: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent loss of the local batch of pairs, optionally contrasted across devices.

  Without `axis_name`, z_a and z_b hold the whole batch (N = n) and the result is the
  paper's L. With `axis_name`, call this per device inside `jax.shard_map(...,
  check_vma=False)` (the pmap programming model) with the device's own n pairs: both
  views are gathered from every device (N = n x devices), and the device computes only
  the logits of its own 2n anchors against all 2N candidates, [2n, 2N] in memory, never
  [2N, 2N]. The returned loss is the mean over this device's 2n anchors; as every device
  holds the same n, `lax.pmean(loss, axis_name)` is exactly the global L.

  Gradients under check_vma=False: `all_gather` transposes to a reduce-scatter, so the
  gradient of one device's loss w.r.t. its own z shard is the gradient of the SUM of all
  devices' losses (devices x L). For parameters replicated across devices, `pmean` of
  the per-device gradients therefore equals the single-device gradient of L on the
  concatenated batch (the usual pmap recipe: local mean loss, pmean gradients).

  Args:
    z_a: [n, d] projections of the first view of the local examples, any float dtype.
    z_b: [n, d] projections of the second view, row i paired with z_a's row i.
    temperature: tau > 0; the logits are cosine similarities / tau.
    axis_name: the mapped mesh axis to contrast across, or None for one device.
    official_scaling: return 2L, the official code's mean over N of (loss_a + loss_b).
    hidden_norm: L2-normalise z first (cosine similarities, the paper); False uses the
      raw dot products (the official hidden_norm flag).

  Returns:
    (loss, aux): loss, a float32 scalar (this device's share when axis_name is set);
    aux, float32 scalars over the local anchors, whose pmean is the global value:
    "contrast_acc", the fraction of anchors whose positive has the largest logit, and
    "contrast_entropy", the mean entropy (nats) of the softmax over the 2N - 1
    candidates of an anchor; "contrast_acc_official", the official code's contrastive
    accuracy: the fraction of first-view anchors whose positive has the largest logit
    among the N second views (its logits_ab), over the local first views.
  """
  if z_a.ndim != 2 or z_a.shape != z_b.shape:
    raise ValueError(
        f"z_a and z_b must both be [n, d] with the same shape, got {z_a.shape} and "
        f"{z_b.shape}")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  n = z_a.shape[0]
  # Logits and softmax in float32 whatever the model's compute dtype: at tau = 0.1 a
  # bfloat16 cosine similarity would be off by up to ~0.04 in the logit.
  z_a, z_b = z_a.astype(jnp.float32), z_b.astype(jnp.float32)
  if hidden_norm:
    z_a, z_b = _l2_normalize(z_a), _l2_normalize(z_b)

  if axis_name is None:
    all_a, all_b = z_a, z_b
    offset = 0
  else:
    all_a = jax.lax.all_gather(z_a, axis_name, tiled=True)
    all_b = jax.lax.all_gather(z_b, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * n
  big_n = all_a.shape[0]

  anchors = jnp.concatenate([z_a, z_b], axis=0)  # [2n, d]
  candidates = jnp.concatenate([all_a, all_b], axis=0)  # [2N, d], global order
  # HIGHEST: accelerators' default float32 matmul precision rounds inputs to bfloat16.
  logits = jnp.matmul(
      anchors, candidates.T, precision=jax.lax.Precision.HIGHEST) / temperature

  # Local anchor r < n is view a of global example offset + r (global row offset + r),
  # r >= n is view b of example offset + r - n (global row N + offset + r - n); its
  # positive is the other view of the same example.
  row = jnp.arange(2 * n)
  example = offset + row % n
  is_view_a = row < n
  self_col = jnp.where(is_view_a, example, big_n + example)
  pos_col = jnp.where(is_view_a, big_n + example, example)
  cols = jnp.arange(2 * big_n)
  logits = jnp.where(cols[None, :] == self_col[:, None], _MASK_VALUE, logits)

  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [2n, 2N]
  pos_log_prob = jnp.take_along_axis(log_probs, pos_col[:, None], axis=-1)[:, 0]
  loss = -jnp.mean(pos_log_prob)
  if official_scaling:
    loss = 2.0 * loss

  log_probs = jax.lax.stop_gradient(log_probs)
  acc = jnp.mean((jnp.argmax(log_probs, axis=-1) == pos_col).astype(jnp.float32))
  # Rows of the first views against the second views' columns: the official logits_ab.
  logits_ab = log_probs[:n, big_n:]
  acc_official = jnp.mean((jnp.argmax(logits_ab, axis=-1) == example[:n]).astype(jnp.float32))
  # The masked column has probability exactly 0 and a finite log-probability: adds 0.
  entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
  return loss, {"contrast_acc": acc, "contrast_entropy": entropy,
                "contrast_acc_official": acc_official}
