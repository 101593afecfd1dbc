"""All views of a batch of fixed-size images, and per-example decoding of encoded ones.

A JPEG is decoded only inside the union of its views' crop boxes, each box drawn by
TensorFlow's op seeded from the example's seed (`crop_seed`).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from simclr_jax.augment.color import color_gray_clip, blur_views
from simclr_jax.augment.crop import crop_resize_batch, eval_window, sample_crop_window
from simclr_jax.augment.operators import apply_view_operators
from simclr_jax.augment.spec import ViewSpec, color_params, flip_draw, view_uniforms


@tf.function(jit_compile=True, reduce_retracing=False)
def _augment_fixed_xla(images, u, spec):
  n, height, width, _ = images.shape
  v = u.shape[0]
  size = spec.image_size
  if spec.crop:
    windows = sample_crop_window(u, height, width, spec)
  else:  # the whole image
    windows = tf.broadcast_to(tf.constant([0, 0, height, width]), [v, n, 4])
  views = crop_resize_batch(images, windows, flip_draw(u, spec), size,
                            scale=1.0 / 255.0 if images.dtype == tf.uint8 else 1.0)
  flat_u = tf.reshape(u, [v * n, u.shape[-1]])
  return color_gray_clip(tf.reshape(views, [v * n, size, size, 3]),
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
  n, v, k = u.shape
  u = tf.transpose(u, [1, 0, 2])  # view-major, as the output
  flat = blur_views(_augment_fixed_xla(images, u, spec),
                    color_params(tf.reshape(u, [v * n, k]), spec), spec)
  return tf.unstack(tf.reshape(flat, [v, n, spec.image_size, spec.image_size, 3]))


def augment_fixed_views(images: tf.Tensor, seeds: tf.Tensor,
                        specs: tuple[ViewSpec, ...]) -> list[tf.Tensor]:
  """View v of a batch of same-size images [N, H, W, 3] drawn from specs[v].

  seeds: the examples' stateless seeds [N, 2]. All views in one program when their
  specs are equal; then Figure 4's other operators (`augment.operators`), if on.
  """
  u = view_uniforms(seeds, len(specs), specs[0])
  if len(set(specs)) == 1:
    views = augment_fixed_batch(images, u, specs[0])
  else:
    views = [augment_fixed_batch(images, u[:, v:v + 1], spec)[0]
             for v, spec in enumerate(specs)]
  return apply_view_operators(views, seeds, specs)


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


def _boxes(shape: tf.Tensor, seed: tf.Tensor,
           specs: tuple[ViewSpec, ...]) -> list[tuple[tf.Tensor, tf.Tensor]]:
  def whole():
    return tf.zeros([3], tf.int32), tf.concat([shape[:2], [-1]], 0)
  return [crop_box(shape, seed, v, spec) if spec.crop else whole()
          for v, spec in enumerate(specs)]


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
                 specs: ViewSpec | tuple[ViewSpec, ...]) -> list[tf.Tensor]:
  """Crops, resizes and flips V views of one encoded image: V float32 [S, S, 3] in 0-255.

  A JPEG is decoded once, inside the union of the V crop boxes only (its header gives
  the size the boxes are drawn for); other formats are decoded whole, once. Values
  are left in 0-255 with the bicubic overshoot: `finish_views(..., scale=1/255)`
  continues. With crop disabled a view is the whole image resized to S x S.

  Args:
    encoded: the image file's bytes, a scalar string.
    seed: the example's stateless seed, int64 [2]: view v's crop box is drawn with
      `crop_seed(seed, v)`.
    u: [V, K] the views' uniforms (`view_uniforms` of seed): the flips.
    specs: view v's distribution specs[v], or one for every view.
  """
  num_views = u.shape[0]
  specs = (specs,) * num_views if isinstance(specs, ViewSpec) else tuple(specs)
  size = specs[0].image_size
  # One draw for all views, as a tf.data map's per-example cost is counted in ops.
  flipping = [spec for spec in specs if spec.flip]
  draws = tf.unstack(flip_draw(u, flipping[0])) if flipping else [None] * num_views
  flips = [d if spec.flip else None for d, spec in zip(draws, specs)]

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)
    boxes = _boxes(shape, seed, specs)
    top_left = functools.reduce(tf.minimum, [b for b, _ in boxes])
    bottom_right = functools.reduce(tf.maximum, [b + s for b, s in boxes])
    union = tf.image.decode_and_crop_jpeg(
        encoded, tf.concat([top_left[:2], (bottom_right - top_left)[:2]], 0), channels=3)
    return [_view(union, b - top_left, s, f, size) for (b, s), f in zip(boxes, flips)]

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    boxes = _boxes(tf.shape(image), seed, specs)
    return [_view(image, b, s, f, size) for (b, s), f in zip(boxes, flips)]

  views = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  for view in views:
    view.set_shape([size, size, 3])
  return views  # not stacked: the batch is split by view again anyway


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
