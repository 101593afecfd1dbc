"""SimCLR's view augmentations (paper Appendix A), in TensorFlow for the tf.data pipeline.

The semantics are those of the official TF code: a random resized crop drawn like
`tf.image.sample_distorted_bounding_box` (bicubic resize, no antialias), a horizontal
flip, colour jitter (brightness, contrast, saturation, hue in a random order per image,
clipped after each) applied with some probability, grayscale, optional Gaussian blur,
final clip to [0, 1].

The cost is arranged differently, for speed on a few host cores:
- Every random number of a view comes from a per-example seed: one stateless uniform
  draw (`view_uniforms`), and for encoded images the crop op seeded from it
  (`crop_seed`). So a view depends only on (image, seed): the same
  whatever the batch it lands in, which makes resumed and multi-process streams exact.
- Fixed-size images (CIFAR-like) are cropped, resized and flipped as a batch of two
  matrix products per view, with crop windows drawn by `sample_crop_window`, the op's
  kernel reimplemented vectorised over its 100 attempts and the batch (tested against
  the op). Encoded images (JPEGs) are processed per example: each view's crop box is
  the op itself (`crop_box`, seeded from the example's seed), and a JPEG is decoded
  only inside the union of its views' boxes.
- Colour, grayscale and blur run as one XLA program per batch that loops over the
  views and runs, for each, only the operations it draws (saturation and hue in RGB,
  equal to tf.image's HSV definitions; a separable blur kernel).
"""

from __future__ import annotations

import dataclasses
import functools

import tensorflow as tf

from simclr_jax import philox

# The per-view vector of uniforms: these, then 4 x max_attempts for the crop sampler of
# fixed-size images (encoded ones are cropped by TensorFlow's op, with its own seed).
_FLIP, _COLOR, _PERM, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY, _BLUR, _SIGMA = (
    0, 1, 2, 6, 7, 8, 9, 10, 11, 12)
_NUM_EXTRA = 13
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's
EVAL_CROP_PROPORTION = 0.875  # centre crop of the official code
# Brightness of the official colour jitter (data_util.random_brightness(impl=...)):
# "simclrv1" adds a delta uniform in [-0.8 s, 0.8 s] (tf.image.random_brightness, the v1
# paper's appendix); "simclrv2" multiplies by a factor in [max(0, 1 - 0.8 s), 1 + 0.8 s].
JITTER_IMPLS = ("simclrv1", "simclrv2")


def hide_accelerators() -> None:
  """Keeps TensorFlow (tf.data) off GPUs/TPUs: they belong to JAX."""
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      pass  # already initialised, or no such device type: nothing to hide


hide_accelerators()


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """Everything that defines the distribution of one view; hashable (keys traces)."""
  image_size: int
  crop: bool = True
  area_range: tuple[float, float] = (0.08, 1.0)
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  min_object_covered: float = 0.1
  max_attempts: int = 100
  flip: bool = True
  color_jitter_prob: float = 0.8
  color_strength: float = 1.0
  jitter_impl: str = "simclrv2"  # one of JITTER_IMPLS
  color_random_order: bool = True  # False: brightness, contrast, saturation, hue
  grayscale_prob: float = 0.2
  blur: bool = False  # blur here, in tf.data (config.augment.blur_on == "data")
  blur_prob: float = 0.5
  blur_sigma_range: tuple[float, float] = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1

  def __post_init__(self):
    if self.jitter_impl not in JITTER_IMPLS:
      raise ValueError(f"jitter_impl must be one of {JITTER_IMPLS}, got {self.jitter_impl!r}")

  @property
  def num_uniforms(self) -> int:
    return _NUM_EXTRA + 4 * self.max_attempts

  @property
  def colors(self) -> bool:
    return self.color_jitter_prob > 0 and self.color_strength > 0

  @classmethod
  def pretrain(cls, config) -> "ViewSpec":
    """The SimCLR view of `config.augment` (blur here only when blur_on == "data")."""
    a = config.augment
    return cls(image_size=int(config.data.image_size), crop=bool(a.crop),
               area_range=tuple(float(v) for v in a.area_range),
               aspect_ratio_range=tuple(float(v) for v in a.aspect_ratio_range),
               flip=bool(a.flip), color_jitter_prob=float(a.color_jitter_prob),
               color_strength=float(a.color_strength), jitter_impl=str(a.jitter_impl),
               color_random_order=bool(a.color_random_order),
               grayscale_prob=float(a.grayscale_prob),
               blur=bool(a.blur) and a.blur_on == "data", blur_prob=float(a.blur_prob),
               blur_sigma_range=tuple(float(v) for v in a.blur_sigma_range),
               blur_kernel_fraction=float(a.blur_kernel_fraction))

  @classmethod
  def crop_flip(cls, config) -> "ViewSpec":
    """Linear-eval / fine-tune training view: random resized crop and flip only."""
    return dataclasses.replace(cls.pretrain(config), color_jitter_prob=0.0,
                               grayscale_prob=0.0, blur=False)


def blur_radius(image_size: int, kernel_fraction: float) -> int:
  """Half-width of the blur kernel: side int(fraction * size) made odd (23 at 224 px)."""
  return int(kernel_fraction * image_size) // 2


def gaussian_kernel(sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Normalised 1-D Gaussian taps [..., 2 radius + 1] for sigma [...] (pixels)."""
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  k = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma[..., None])))
  return k / tf.reduce_sum(k, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------
# Random numbers
# ----------------------------------------------------------------------------------

def view_uniforms(seed: tf.Tensor, num_views: int, spec: ViewSpec, *,
                  crop_attempts: bool = True) -> tf.Tensor:
  """All random numbers of `num_views` views of an example: [num_views, K] in [0, 1).

  `seed` is a stateless-RNG seed, shape [2] integer; or a batch of them, [B, 2], for
  [B, num_views, K]: the same numbers, made by one XLA program for the whole batch.
  K = spec.num_uniforms, or without the crop sampler's (`crop_attempts=False`, for
  encoded images, whose crop op draws its own): K = the colour/flip/blur ones only.
  """
  shape = [num_views, spec.num_uniforms if crop_attempts else _NUM_EXTRA]
  if seed.shape.rank == 1:
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)
  return tf.reshape(_batch_uniforms_xla(seed, num_views * shape[1]), [-1] + shape)


@tf.function(jit_compile=True, reduce_retracing=False)
def _batch_uniforms_xla(seeds, num):
  return philox.stateless_uniform(seeds, num)


def _extra(u: tf.Tensor, index: int) -> tf.Tensor:
  return u[..., index]


def color_params(u: tf.Tensor, spec: ViewSpec) -> dict[str, tf.Tensor]:
  """Per-view colour/grayscale/blur draws from uniforms u [..., K]; each [...]."""
  s = spec.color_strength

  def between(index, lo, hi):
    return lo + _extra(u, index) * (hi - lo)

  keys = u[..., _PERM:_PERM + 4]
  if not spec.color_random_order:
    keys = tf.broadcast_to(tf.range(4, dtype=keys.dtype), tf.shape(keys))
  return {
      "color": _extra(u, _COLOR) < spec.color_jitter_prob,
      # A uniformly random order of (brightness, contrast, saturation, hue), or that
      # order itself.
      "order": tf.argsort(keys, axis=-1, stable=True),
      # An additive delta (simclrv1) or a factor (simclrv2).
      "brightness": (between(_BRIGHT, -0.8 * s, 0.8 * s) if spec.jitter_impl == "simclrv1"
                     else between(_BRIGHT, max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s)),
      "contrast": between(_CONTRAST, max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s),
      "saturation": between(_SAT, max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s),
      "hue": between(_HUE, -0.2 * s, 0.2 * s),
      "gray": _extra(u, _GRAY) < spec.grayscale_prob,
      "blur": _extra(u, _BLUR) < spec.blur_prob,
      "sigma": between(_SIGMA, *spec.blur_sigma_range),
  }


def flip_draw(u: tf.Tensor, spec: ViewSpec) -> tf.Tensor:
  """Whether each view is mirrored left-right: bool [...]."""
  if not spec.flip:
    return tf.zeros_like(_extra(u, _FLIP), dtype=tf.bool)
  return _extra(u, _FLIP) < 0.5


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
  u = u[..., _NUM_EXTRA:_NUM_EXTRA + 4 * n]
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


def center_window(height: tf.Tensor, width: tf.Tensor, size: int) -> tf.Tensor:
  """The central size x size window (no crop augmentation): int32 [..., 4]."""
  height = tf.cast(height, tf.int32)
  width = tf.cast(width, tf.int32)
  s = tf.fill(tf.shape(height), size)
  return tf.stack([(height - size) // 2, (width - size) // 2, s, s], axis=-1)


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


def _finish_views(views: tf.Tensor, params: dict[str, tf.Tensor], spec: ViewSpec,
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
  return _finish_views(views, color_params(u, spec), spec, scale)


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


@tf.function(jit_compile=True, reduce_retracing=False)
def _augment_fixed_xla(images, u, spec):
  n, height, width, _ = images.shape
  v = u.shape[0]
  size = spec.image_size
  if spec.crop:
    windows = sample_crop_window(u, height, width, spec)
  else:
    windows = center_window(tf.fill([v, n], height), tf.fill([v, n], width), size)
  views = crop_resize_batch(images, windows, flip_draw(u, spec), size,
                            scale=1.0 / 255.0 if images.dtype == tf.uint8 else 1.0)
  flat_u = tf.reshape(u, [v * n, u.shape[-1]])
  return _finish_views(tf.reshape(views, [v * n, size, size, 3]),
                       color_params(flat_u, spec), spec, 1.0)


def augment_fixed_batch(images: tf.Tensor, u: tf.Tensor,
                        spec: ViewSpec) -> list[tf.Tensor]:
  """All views of a batch of same-size images, in one XLA program.

  Args:
    images: [N, H, W, 3] uint8 (0-255) or float32 ([0, 1]); static shape.
    u: [N, V, K] uniforms (`view_uniforms` per example).
    spec: the view distribution.

  Returns:
    V tensors float32 [N, S, S, 3] in [0, 1]: view v of every image (slices of one
    view-major buffer, so no copy).
  """
  if not spec.crop and (images.shape[1] < spec.image_size or images.shape[2] < spec.image_size):
    raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} px are smaller than "
                     f"the output size {spec.image_size} with crop augmentation disabled "
                     "(config.augment.crop = False takes a central crop)")
  n, v, k = u.shape
  u = tf.transpose(u, [1, 0, 2])  # view-major, as the output
  flat = blur_views(_augment_fixed_xla(images, u, spec),
                    color_params(tf.reshape(u, [v * n, k]), spec), spec)
  return tf.unstack(tf.reshape(flat, [v, n, spec.image_size, spec.image_size, 3]))


# ----------------------------------------------------------------------------------
# Decoding (per example): only the views' window of a JPEG
# ----------------------------------------------------------------------------------

_WHOLE_IMAGE = (((0.0, 0.0, 1.0, 1.0),),)  # the bounding box [1, 1, 4]


def crop_seed(seed: tf.Tensor, view: int) -> tf.Tensor:
  """The crop op's seed for view `view` of an example with seed (key, index) [2].

  The key is offset by view + 1, so the stream differs from the example's uniforms
  (seed itself) and from every other example (a different index, or epoch key).
  """
  return seed + tf.constant([view + 1, 0], seed.dtype)


def crop_box(shape: tf.Tensor, seed: tf.Tensor, view: int,
             spec: ViewSpec) -> tuple[tf.Tensor, tf.Tensor]:
  """One view's random resized crop of an image of `shape` (H, W, C): (begin, size) [3].

  `tf.image.stateless_sample_distorted_bounding_box` itself: one op per view, as
  the per-example cost of a tf.data map is counted in ops.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.constant(_WHOLE_IMAGE), seed=crop_seed(seed, view),
      min_object_covered=spec.min_object_covered,
      aspect_ratio_range=spec.aspect_ratio_range, area_range=spec.area_range,
      max_attempts=spec.max_attempts, use_image_if_no_bounding_boxes=True)
  return begin, size


def _boxes(shape: tf.Tensor, seed: tf.Tensor, num_views: int,
           spec: ViewSpec) -> list[tuple[tf.Tensor, tf.Tensor]]:
  if spec.crop:
    return [crop_box(shape, seed, v, spec) for v in range(num_views)]
  side = tf.minimum(tf.reduce_min(shape[:2]), spec.image_size)
  begin = tf.concat([(shape[:2] - side) // 2, [0]], 0)
  return [(begin, tf.stack([side, side, -1]))] * num_views


def _view(pixels: tf.Tensor, begin: tf.Tensor, size: tf.Tensor, flip: tf.Tensor | None,
          out_size: int) -> tf.Tensor:
  """The box (begin, size) [3] of pixels, mirrored if flip, resized bicubically."""
  crop = tf.slice(pixels, begin, size)
  if flip is not None:
    # On the uint8 crop: a mirror of the float view inside the colour program cost
    # more (~0.1 ms per 224 px view) than this op and its conditional.
    crop = tf.cond(flip, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
  # From float32: the same values, and TF's uint8 bicubic kernel is ~1.5x slower.
  return tf.image.resize(tf.cast(crop, tf.float32), [out_size, out_size],
                         method="bicubic", antialias=False)


def decode_views(encoded: tf.Tensor, seed: tf.Tensor, u: tf.Tensor,
                 spec: ViewSpec) -> tuple[list[tf.Tensor], tf.Tensor]:
  """Crops, resizes and flips V views of one encoded image.

  Returns (views, image_size): V float32 [S, S, 3] in 0-255, and the image's
  (height, width) int32 [2].

  A JPEG is decoded once, inside the union of the V crop boxes only (its header gives
  the size the boxes are drawn for); other formats are decoded whole, once. Values
  are left in 0-255 with the bicubic overshoot: `finish_views(..., scale=1/255)`
  continues. With crop disabled a view is the central S x S window; an image smaller
  than that is used whole (the input pipeline reports it as an error).

  Args:
    encoded: the image file's bytes, a scalar string.
    seed: the example's stateless seed, int64 [2]: view v's crop box is drawn with
      `crop_seed(seed, v)`.
    u: [V, K] the views' uniforms (`view_uniforms` of seed): the flips.
    spec: the view distribution.
  """
  size, num_views = spec.image_size, u.shape[0]
  flips = tf.unstack(flip_draw(u, spec)) if spec.flip else [None] * num_views

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    boxes = _boxes(shape, seed, num_views, spec)
    top_left = functools.reduce(tf.minimum, [b for b, _ in boxes])
    bottom_right = functools.reduce(tf.maximum, [b + s for b, s in boxes])
    union = tf.image.decode_and_crop_jpeg(
        encoded, tf.concat([top_left[:2], (bottom_right - top_left)[:2]], 0), channels=3)
    views = [_view(union, b - top_left, s, f, size) for (b, s), f in zip(boxes, flips)]
    return views, shape[:2]

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.shape(image)
    boxes = _boxes(shape, seed, num_views, spec)
    return [_view(image, b, s, f, size) for (b, s), f in zip(boxes, flips)], shape[:2]

  views, image_size = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  for view in views:
    view.set_shape([size, size, 3])
  return views, image_size  # views not stacked: the batch is split by view again anyway


def eval_view(encoded_or_image: tf.Tensor, size: int, *, crop: bool) -> tf.Tensor:
  """Eval preprocessing of one image: float32 [S, S, 3] in [0, 1].

  crop=True: the official centre crop (87.5% of the shorter side), bicubic resize;
  crop=False (32 px datasets): the image itself, resized only if it is not S x S.
  Accepts encoded bytes (a JPEG is decoded inside the window only) or a uint8 image.
  """
  def window_of(hw):
    return eval_window(hw[0], hw[1]) if crop else tf.stack([0, 0, hw[0], hw[1]])

  def cut(image):
    w = window_of(tf.shape(image)[:2])
    return image[w[0]:w[0] + w[2], w[1]:w[1] + w[3]]

  if encoded_or_image.dtype == tf.string:
    encoded = encoded_or_image
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.image.decode_and_crop_jpeg(
            encoded, window_of(tf.image.extract_jpeg_shape(encoded)[:2]), channels=3),
        lambda: cut(tf.io.decode_image(encoded, channels=3, expand_animations=False)))
  else:
    image = cut(encoded_or_image)
  image = tf.cast(image, tf.float32)
  same = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
  image = tf.cond(same, lambda: tf.image.resize(image, [size, size], method="nearest"),
                  lambda: tf.image.resize(image, [size, size], method="bicubic",
                                          antialias=False))
  image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
  image.set_shape([size, size, 3])
  return image
