"""Colour jitter, grayscale and Gaussian blur of views, as one XLA program per batch.

The program loops over the views and runs, for each, only the operations it draws
(saturation and hue in RGB, equal to tf.image's HSV definitions; a separable blur
kernel).
"""

from __future__ import annotations

import tensorflow as tf

from simclr_jax.augment.spec import ViewSpec, blur_radius, color_params, gaussian_kernel


GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's


# ----------------------------------------------------------------------------------
# Colour, grayscale, blur of one view (inside an XLA loop)
# ----------------------------------------------------------------------------------

def _channels_max_min(x):
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  mx = tf.maximum(tf.maximum(r, g), b)
  mn = tf.minimum(tf.minimum(r, g), b)
  return r, g, b, mx, mn


def adjust_saturation(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """tf.image.adjust_saturation (S of HSV scaled, clipped to [0, 1]) done in RGB.

  Keeping V = max and the hue, scaling S moves each channel towards/away from the
  max: c' = max - (max - c) g with g = min(factor, max / (max - min)); g = 0 where
  max <= 0 (tf.image's S is 0 there).
  """
  _, _, _, mx, mn = _channels_max_min(x)
  d = mx - mn
  gain = tf.where(mx > 0.0, tf.minimum(factor, mx / tf.where(d > 0.0, d, 1.0)), 0.0)
  return mx[..., None] - (mx[..., None] - x) * gain[..., None]


def adjust_hue(x: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """tf.image.adjust_hue (H of HSV rotated by delta turns) done in RGB.

  With max, min fixed, channel n is max - (max - min) t((n + 6 h) mod 6) for the
  hexcone's trapezoid t; n = 5, 3, 1 for R, G, B.
  """
  r, g, b, mx, mn = _channels_max_min(x)
  d = mx - mn
  inv = 1.0 / tf.where(d > 0.0, d, 1.0)
  h = tf.where(r >= mx, (g - b) * inv,
               tf.where(g >= mx, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
  h = h + 6.0 * delta
  # The channels as one broadcast expression, not a stack of three: XLA CPU compiles a
  # stack into per-channel passes that each recompute h (4x slower).
  k = h[..., None] + tf.constant([5.0, 3.0, 1.0])
  k = k - 6.0 * tf.floor(k * (1.0 / 6.0))
  return mx[..., None] - d[..., None] * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """tf.image.adjust_contrast: (x - mean) factor + mean, per channel over H, W.

  x: [..., H, W, C] with static H, W, C; factor broadcasts against x.
  """
  *_, height, width, channels = x.shape
  # The column sums as a product with ones: XLA CPU runs this ~2.5x faster than a
  # reduction over H and W (a third of the contrast op inside the colour program).
  rows = tf.reshape(x, [-1, height, width * channels])
  sums = tf.linalg.matvec(rows, tf.ones([height], x.dtype), transpose_a=True)
  mean = tf.reduce_sum(tf.reshape(sums, [-1, 1, width, channels]), axis=-2, keepdims=True)
  mean = tf.reshape(mean / (height * width), tf.concat([tf.shape(x)[:-3], [1, 1, channels]], 0))
  return (x - mean) * factor + mean


def to_grayscale(x: tf.Tensor) -> tf.Tensor:
  """tf.image.rgb_to_grayscale, kept as 3 channels."""
  gray = x[..., 0] * GRAY_WEIGHTS[0] + x[..., 1] * GRAY_WEIGHTS[1] + x[..., 2] * GRAY_WEIGHTS[2]
  return tf.broadcast_to(gray[..., None], tf.shape(x))


_NO_JITTER = 4  # the order index of a slot that leaves the view as it is


def _jitter(x, order, brightness, contrast, saturation, hue, additive_brightness):
  """The 4 jitter slots; order [4] int: the op of each slot, or _NO_JITTER."""
  # A loop over the slots, not unrolled (XLA takes ~10x longer to compile that), and
  # no tf.cond around it for a view drawn without colour: its slots take the no-op
  # branch instead, since XLA CPU copies a view into and out of every conditional.
  bright = (lambda x: x + brightness) if additive_brightness else (lambda x: x * brightness)

  def body(k, x):
    branches = [lambda: tf.clip_by_value(bright(x), 0.0, 1.0),
                lambda: tf.clip_by_value(adjust_contrast(x, contrast), 0.0, 1.0),
                lambda: tf.clip_by_value(adjust_saturation(x, saturation), 0.0, 1.0),
                lambda: tf.clip_by_value(adjust_hue(x, hue), 0.0, 1.0),
                lambda: x]
    return k + 1, tf.switch_case(order[k], branches)

  return tf.while_loop(lambda k, _: k < 4, body, (tf.constant(0), x))[1]


def color_gray_clip(views: tf.Tensor, params: dict[str, tf.Tensor], spec: ViewSpec,
                    scale: float) -> tf.Tensor:
  """Colour jitter, grayscale and clip of views [M, S, S, 3] (one XLA loop)."""
  m = views.shape[0]

  def body(i, out):
    x = views[i] * scale
    if spec.colors:
      order = tf.where(params["color"][i], params["order"][i], _NO_JITTER)
      x = _jitter(x, order, params["brightness"][i], params["contrast"][i],
                  params["saturation"][i], params["hue"][i],
                  additive_brightness=spec.jitter_impl == "simclrv1")
    if spec.grayscale_prob > 0:
      x = tf.cond(params["gray"][i], lambda: to_grayscale(x), lambda: x)
    return i + 1, out.write(i, tf.clip_by_value(x, 0.0, 1.0))

  out = tf.TensorArray(tf.float32, size=m, element_shape=views.shape[1:])
  _, out = tf.while_loop(lambda i, _: i < m, body, (tf.constant(0), out))
  return out.stack()


def blur_views(views: tf.Tensor, params: dict[str, tf.Tensor], spec: ViewSpec) -> tf.Tensor:
  """Blurs the views drawn for it (params["blur"]) with their own sigma; clips.

  Only the selected views are blurred: gathered into the channels of one image and
  filtered by a per-channel separable kernel (two depthwise convolutions, SAME zero
  padding), then scattered back. views: [M, S, S, 3] in [0, 1].
  """
  radius = blur_radius(spec.image_size, spec.blur_kernel_fraction)
  if not spec.blur or radius == 0:
    return views
  _, h, w, c = views.shape
  taps = 2 * radius + 1
  index = tf.where(params["blur"])[:, 0]

  def blur():
    chosen = tf.gather(views, index)
    n = tf.shape(chosen)[0]
    kernel = gaussian_kernel(tf.gather(params["sigma"], index), radius)  # [n, taps]
    kernel = tf.transpose(tf.repeat(kernel, c, axis=0))  # [taps, n c]: channel = (view, c)
    x = tf.reshape(tf.transpose(chosen, [1, 2, 0, 3]), [1, h, w, n * c])
    x = tf.nn.depthwise_conv2d(x, tf.reshape(kernel, [taps, 1, n * c, 1]), [1, 1, 1, 1],
                               "SAME")
    x = tf.nn.depthwise_conv2d(x, tf.reshape(kernel, [1, taps, n * c, 1]), [1, 1, 1, 1],
                               "SAME")
    x = tf.transpose(tf.reshape(x, [h, w, n, c]), [2, 0, 1, 3])
    return tf.tensor_scatter_nd_update(views, index[:, None], tf.clip_by_value(x, 0.0, 1.0))

  # No view drawn for blur (likely in small batches): a convolution with no channels
  # is an error, so skip it.
  return tf.cond(tf.size(index) > 0, blur, lambda: views)


@tf.function(jit_compile=True, reduce_retracing=False)
def _finish_views_xla(views, u, spec, scale):
  return color_gray_clip(views, color_params(u, spec), spec, scale)


def finish_views(views: tf.Tensor, u: tf.Tensor, spec: ViewSpec,
                 scale: float = 1.0) -> tf.Tensor:
  """Colour distortion, grayscale, clip and (spec.blur) blur of resized views.

  Args:
    views: [M, S, S, 3] float32 (bicubic output: may overshoot the value range).
    u: [M, K] the views' uniforms.
    spec: the view distribution.
    scale: multiplies `views` first (1/255 for 0-255 inputs).

  Returns:
    float32 [M, S, S, 3] in [0, 1].
  """
  out = _finish_views_xla(views, u, spec, scale)
  return blur_views(out, color_params(u, spec), spec)

