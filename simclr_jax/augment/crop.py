"""Crop windows and the batched bicubic crop-resize-flip of fixed-size images.

`sample_crop_window` is the kernel of `tf.image.sample_distorted_bounding_box`
vectorised over its attempts and the batch; `crop_resize_batch` crops, resizes and flips
a batch as two matrix products per view.
"""

from __future__ import annotations

import tensorflow as tf

from simclr_jax.augment.spec import NUM_EXTRA, ViewSpec


EVAL_CROP_PROPORTION = 0.875  # centre crop of the official code


# ----------------------------------------------------------------------------------
# Crop windows
# ----------------------------------------------------------------------------------

def sample_crop_window(u: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                       spec: ViewSpec) -> tf.Tensor:
  """Random resized crop windows, as `tf.image.sample_distorted_bounding_box`.

  The bounding box is the whole image; an attempt draws an aspect ratio w/h, then a
  height uniform in the integers allowed by the area range, then an offset; the first
  attempt whose area is inside the range and covers >= min_object_covered of the image
  wins, else the whole image. Vectorised over the attempts (and any leading axes).

  Args:
    u: uniforms [..., K] from `view_uniforms`.
    height, width: image size in pixels, int [...] (broadcastable to u[..., 0]).
    spec: the view distribution.

  Returns:
    int32 [..., 4]: (offset_y, offset_x, crop_height, crop_width).
  """
  n = spec.max_attempts
  u = u[..., NUM_EXTRA:NUM_EXTRA + 4 * n]
  img_h = tf.cast(height, tf.float32)[..., None] + tf.zeros_like(u[..., :1])
  img_w = tf.cast(width, tf.float32)[..., None] + tf.zeros_like(u[..., :1])
  # The official code scales the range by the output's aspect ratio (1: square views).
  lo, hi = spec.aspect_ratio_range
  ratio = lo + u[..., 0:n] * (hi - lo)
  img_area = img_h * img_w
  min_area = spec.area_range[0] * img_area
  max_area = spec.area_range[1] * img_area
  crop_h = tf.math.rint(tf.sqrt(min_area / ratio))
  max_h = tf.math.rint(tf.sqrt(max_area / ratio))
  # The largest height whose rounded width still fits.
  fit = tf.floor((img_w + (0.5 - 1e-7)) / ratio)
  fit = tf.where(tf.math.rint(fit * ratio) > img_w, fit - 1.0, fit)
  max_h = tf.where(tf.math.rint(max_h * ratio) > img_w, fit, max_h)
  max_h = tf.minimum(max_h, img_h)
  crop_h = tf.minimum(crop_h, max_h)
  span = max_h - crop_h + 1.0
  crop_h += tf.minimum(tf.floor(u[..., n:2 * n] * span), span - 1.0)
  crop_w = tf.math.rint(crop_h * ratio)
  # The kernel's rounding repairs: one pixel taller if too small, shorter if too big.
  grow = crop_w * crop_h < min_area
  crop_h = tf.where(grow, crop_h + 1.0, crop_h)
  crop_w = tf.where(grow, tf.math.rint(crop_h * ratio), crop_w)
  shrink = crop_w * crop_h > max_area
  crop_h = tf.where(shrink, crop_h - 1.0, crop_h)
  crop_w = tf.where(shrink, tf.math.rint(crop_h * ratio), crop_w)
  area = crop_w * crop_h
  ok = ((area >= min_area) & (area <= max_area) & (crop_w <= img_w) & (crop_h <= img_h)
        & (crop_w > 0) & (crop_h > 0)
        & (area >= tf.maximum(1.0, spec.min_object_covered * img_area)))
  off_y = tf.minimum(tf.floor(u[..., 2 * n:3 * n] * (img_h - crop_h)),
                     tf.maximum(img_h - crop_h - 1.0, 0.0))
  off_x = tf.minimum(tf.floor(u[..., 3 * n:4 * n] * (img_w - crop_w)),
                     tf.maximum(img_w - crop_w - 1.0, 0.0))
  first = tf.one_hot(tf.argmax(tf.cast(ok, tf.int32), axis=-1), n, dtype=tf.float32)
  window = tf.stack([tf.reduce_sum(v * first, axis=-1)
                     for v in (off_y, off_x, crop_h, crop_w)], axis=-1)
  whole = tf.stack([tf.zeros_like(img_h[..., 0]), tf.zeros_like(img_w[..., 0]),
                    img_h[..., 0], img_w[..., 0]], axis=-1)
  window = tf.where(tf.reduce_any(ok, axis=-1)[..., None], window, whole)
  return tf.cast(window, tf.int32)


def eval_window(height: tf.Tensor, width: tf.Tensor,
                proportion: float = EVAL_CROP_PROPORTION) -> tf.Tensor:
  """The official eval crop: a centred square of `proportion` x the shorter side."""
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  side = tf.cast(tf.math.rint(proportion * tf.minimum(h, w)), tf.int32)
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side], axis=-1)


# ----------------------------------------------------------------------------------
# Resizing
# ----------------------------------------------------------------------------------

def _keys_cubic(d: tf.Tensor, a: float = -0.5) -> tf.Tensor:
  """Keys' cubic convolution kernel (tf.image's bicubic) at distances d >= 0."""
  d2, d3 = d * d, d * d * d
  near = (a + 2.0) * d3 - (a + 3.0) * d2 + 1.0
  far = a * d3 - 5.0 * a * d2 + 8.0 * a * d - 4.0 * a
  return tf.where(d <= 1.0, near, tf.where(d < 2.0, far, 0.0))


def resize_matrix(offset: tf.Tensor, length: tf.Tensor, in_size: int,
                  out_size: int) -> tf.Tensor:
  """Bicubic resampling of the window [offset, offset + length) to out_size samples.

  Row i of the result holds the weights that tf.image.resize(method="bicubic",
  antialias=False) gives the input pixels for output pixel i, after cropping the
  window: half-pixel centres, Keys a = -0.5, taps outside the window dropped and the
  rest renormalised.

  Args:
    offset, length: window start and size along this axis, [...] (any numeric dtype).
    in_size: the full input size along this axis.
    out_size: the output size.

  Returns:
    float32 [..., out_size, in_size].
  """
  offset = tf.cast(offset, tf.float32)[..., None, None]
  length = tf.cast(length, tf.float32)[..., None, None]
  i = tf.range(out_size, dtype=tf.float32)[:, None]
  src = offset + (i + 0.5) * (length / out_size) - 0.5  # [..., S, 1]
  j = tf.range(in_size, dtype=tf.float32)
  # The 4 taps floor(src) - 1 .. floor(src) + 2 are the pixels closer than 2 (the
  # kernel is 0 at 2), so the kernel is evaluated on every (output, input) pair.
  w = _keys_cubic(tf.abs(src - j))  # [..., S, L]
  w = tf.where((j >= offset) & (j <= offset + length - 1.0), w, 0.0)
  return w / tf.reduce_sum(w, axis=-1, keepdims=True)


def crop_resize_batch(images: tf.Tensor, windows: tf.Tensor, flips: tf.Tensor,
                      size: int, scale: float = 1.0) -> tf.Tensor:
  """Crops, resizes (bicubic) and flips same-size images, as two matmuls per view.

  Views come first (view-major) so that each view's batch is one contiguous block.

  Args:
    images: [N, H, W, C] (any real dtype).
    windows: int [V, N, 4] windows (y, x, h, w) from `sample_crop_window`.
    flips: bool [V, N].
    size: output side S.
    scale: multiplies the values (1/255 turns uint8 into [0, 1]).

  Returns:
    float32 [V, N, S, S, C].
  """
  _, height, width, _ = images.shape
  rows = resize_matrix(windows[..., 0], windows[..., 2], height, size) * scale
  cols = resize_matrix(windows[..., 1], windows[..., 3], width, size)
  cols = tf.where(flips[..., None, None], tf.reverse(cols, axis=[-2]), cols)
  x = tf.cast(images, tf.float32)
  x = tf.einsum("vnsh,nhwc->vnswc", rows, x)
  return tf.einsum("vntw,vnswc->vnstc", cols, x)

