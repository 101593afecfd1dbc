"""Figure 4's other operators: rotation, cutout, Sobel filtering, Gaussian noise.

Applied to finished views (after colour, grayscale and blur), in this order, each with
its own probability (`ViewSpec.rotate_prob`, ...):
  rotate: by k x 90 degrees counter-clockwise (np.rot90), k uniform in {1, 2, 3};
  cutout: a square of side rint(f x S) px (at least 1), f ~ U(cutout_size_range),
    centred on a pixel drawn uniformly over the view, clipped at the borders, set to 0;
  sobel: the gradient magnitude sqrt(gx^2 + gy^2) of the grayscale view (3x3 Sobel
    kernels, reflected borders, tf.image.sobel_edges) divided by 4 sqrt(2), its bound
    for values in [0, 1], so in [0, 1]; kept as 3 equal channels;
  noise: + sigma z per pixel and channel, z ~ N(0, 1), sigma ~ U(noise_sigma_range)
    per view; clipped to [0, 1].

Their random numbers come from a stream of their own, seeded by the example's seed
(`operator_seeds`), drawn only when an operator is on: the views of the default policy,
and their random numbers, are those of a pipeline without these operators.
"""

from __future__ import annotations

import math

import tensorflow as tf

from simclr_jax import philox
from simclr_jax.augment.color import to_grayscale
from simclr_jax.augment.spec import ViewSpec

# Per-view uniforms of the operator stream; the noise's S x S x 3 follow those of every
# view (so whether the noise is on changes no other draw).
_ROT, _ROT_K, _CUT, _CUT_SIDE, _CUT_Y, _CUT_X, _SOBEL, _NOISE, _SIGMA = range(9)
NUM_OPERATOR_UNIFORMS = 9
_STREAM_BIT = 1 << 62  # set in the example index: no example has such an index
SOBEL_SCALE = 1.0 / (4.0 * math.sqrt(2.0))


def operator_seeds(seeds: tf.Tensor) -> tf.Tensor:
  """The operator stream's seeds [..., 2] of examples' seeds (key, index) [..., 2]."""
  return tf.bitwise.bitwise_xor(tf.cast(seeds, tf.int64),
                                tf.constant([0, _STREAM_BIT], tf.int64))


@tf.function(jit_compile=True, reduce_retracing=False)
def _uniforms_xla(seeds, num):
  return philox.stateless_uniform(seeds, num)


def operator_uniforms(seeds: tf.Tensor, num_views: int, noise_size: int = 0):
  """The operators' random numbers of a batch of examples with seeds [B, 2].

  Returns (u [B, V, NUM_OPERATOR_UNIFORMS], noise [B, V, noise_size] or None): the
  noise's standard normals (inverse CDF of uniforms; |z| < 5.4), when noise_size > 0.
  """
  per_view = num_views * NUM_OPERATOR_UNIFORMS
  flat = _uniforms_xla(operator_seeds(seeds), per_view + num_views * noise_size)
  u = tf.reshape(flat[:, :per_view], [-1, num_views, NUM_OPERATOR_UNIFORMS])
  if not noise_size:
    return u, None
  # Uniforms are multiples of 2^-23 in [0, 1): shifted to the middle of their cell.
  z = tf.math.ndtri(flat[:, per_view:] + 2.0 ** -24)
  return u, tf.reshape(z, [-1, num_views, noise_size])


def operator_params(u: tf.Tensor, spec: ViewSpec) -> dict[str, tf.Tensor]:
  """One view's draws from its operator uniforms u [B, NUM_OPERATOR_UNIFORMS]; each [B]."""
  size = spec.image_size

  def between(index, lo, hi):
    return lo + u[:, index] * (hi - lo)

  def pixel(index):
    return tf.minimum(tf.cast(tf.floor(u[:, index] * size), tf.int32), size - 1)

  side = tf.math.rint(between(_CUT_SIDE, *spec.cutout_size_range) * size)
  return {
      "rotate": u[:, _ROT] < spec.rotate_prob,
      "k": 1 + tf.minimum(tf.cast(tf.floor(u[:, _ROT_K] * 3.0), tf.int32), 2),
      "cutout": u[:, _CUT] < spec.cutout_prob,
      "side": tf.maximum(tf.cast(side, tf.int32), 1),
      "center_y": pixel(_CUT_Y),
      "center_x": pixel(_CUT_X),
      "sobel": u[:, _SOBEL] < spec.sobel_prob,
      "noise": u[:, _NOISE] < spec.noise_prob,
      "sigma": between(_SIGMA, *spec.noise_sigma_range),
  }


def rotate90(x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
  """Square images [B, S, S, C] rotated by k [B] (0-3) x 90 degrees, as np.rot90."""
  t = tf.transpose(x, [0, 2, 1, 3])
  k = k[:, None, None, None]
  return tf.where(k == 1, tf.reverse(t, [1]),
                  tf.where(k == 2, tf.reverse(x, [1, 2]),
                           tf.where(k == 3, tf.reverse(t, [2]), x)))


def cutout(x: tf.Tensor, apply: tf.Tensor, side: tf.Tensor, center_y: tf.Tensor,
           center_x: tf.Tensor) -> tf.Tensor:
  """Zeroes rows and columns [c - side // 2, c - side // 2 + side) of the images where
  apply [B] (bool); side, center_y, center_x: int [B]."""
  _, height, width, _ = x.shape

  def inside(center, length):
    start = (center - side // 2)[:, None]
    i = tf.range(length)[None, :]
    return (i >= start) & (i < start + side[:, None])  # [B, L]

  hole = inside(center_y, height)[:, :, None] & inside(center_x, width)[:, None, :]
  hole &= apply[:, None, None]
  return tf.where(hole[..., None], tf.zeros_like(x), x)


def sobel(x: tf.Tensor) -> tf.Tensor:
  """Sobel gradient magnitude of the grayscale of x [B, H, W, 3], scaled into [0, 1]."""
  edges = tf.image.sobel_edges(to_grayscale(x)[..., :1])[..., 0, :]  # [B, H, W, (dy, dx)]
  magnitude = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1, keepdims=True)) * SOBEL_SCALE
  return tf.broadcast_to(magnitude, tf.shape(x))


def apply_operators(x: tf.Tensor, u: tf.Tensor, noise: tf.Tensor | None,
                    spec: ViewSpec) -> tf.Tensor:
  """Rotation, cutout, Sobel and noise, as drawn, to views x [B, S, S, 3] in [0, 1].

  u: [B, NUM_OPERATOR_UNIFORMS] the views' operator uniforms; noise: [B, S S 3]
  standard normals (needed when spec.noise_prob > 0).
  """
  p = operator_params(u, spec)
  if spec.rotate_prob > 0:
    x = rotate90(x, tf.where(p["rotate"], p["k"], 0))
  if spec.cutout_prob > 0:
    x = cutout(x, p["cutout"], p["side"], p["center_y"], p["center_x"])
  if spec.sobel_prob > 0:
    x = tf.where(p["sobel"][:, None, None, None], sobel(x), x)
  if spec.noise_prob > 0:
    noisy = tf.clip_by_value(
        x + p["sigma"][:, None, None, None] * tf.reshape(noise, tf.shape(x)), 0.0, 1.0)
    x = tf.where(p["noise"][:, None, None, None], noisy, x)
  return x


def apply_view_operators(views: list[tf.Tensor], seeds: tf.Tensor,
                         specs: tuple[ViewSpec, ...]) -> list[tf.Tensor]:
  """`apply_operators` to views[v] [B, S, S, 3] with specs[v]; seeds [B, 2] the examples'.

  The views themselves when no operator is on (no random numbers drawn).
  """
  if not any(s.operators for s in specs):
    return views
  size = specs[0].image_size
  noise_size = size * size * 3 if any(s.noise_prob > 0 for s in specs) else 0
  u, noise = operator_uniforms(seeds, len(specs), noise_size)
  return [apply_operators(x, u[:, v], None if noise is None else noise[:, v], s)
          if s.operators else x for v, (x, s) in enumerate(zip(views, specs))]
