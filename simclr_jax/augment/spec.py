"""The distribution of a SimCLR view (`ViewSpec`) and the random numbers of a view.

Every random number of a view comes from one stateless uniform draw per example
(`view_uniforms`), so a view depends only on (image, seed).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from simclr_jax import philox
from simclr_jax.choices import JITTER_IMPLS


# The per-view vector of uniforms: these, then 4 x max_attempts for the crop sampler of
# fixed-size images (encoded ones are cropped by TensorFlow's op, with its own seed).
_FLIP, _COLOR, _PERM, _BRIGHT, _CONTRAST, _SAT, _HUE, _GRAY, _BLUR, _SIGMA = (
    0, 1, 2, 6, 7, 8, 9, 10, 11, 12)
NUM_EXTRA = 13
# Brightness of the official colour jitter (data_util.random_brightness(impl=...)):
# "simclrv1" adds a delta uniform in [-0.8 s, 0.8 s] (tf.image.random_brightness, the v1
# paper's appendix); "simclrv2" multiplies by a factor in [max(0, 1 - 0.8 s), 1 + 0.8 s]:
# choices.JITTER_IMPLS.


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
  # Figure 4's other operators (`simclr_jax.augment.operators`), after the blur.
  rotate_prob: float = 0.0
  cutout_prob: float = 0.0
  cutout_size_range: tuple[float, float] = (0.2, 0.5)  # side / image side
  sobel_prob: float = 0.0
  noise_prob: float = 0.0
  noise_sigma_range: tuple[float, float] = (0.05, 0.2)  # on [0, 1] pixel values

  def __post_init__(self):
    if self.jitter_impl not in JITTER_IMPLS:
      raise ValueError(f"jitter_impl must be one of {JITTER_IMPLS}, got {self.jitter_impl!r}")

  @property
  def num_uniforms(self) -> int:
    return NUM_EXTRA + 4 * self.max_attempts

  @property
  def colors(self) -> bool:
    return self.color_jitter_prob > 0 and self.color_strength > 0

  @property
  def operators(self) -> bool:
    """Whether any of rotation, cutout, Sobel or noise can apply."""
    return max(self.rotate_prob, self.cutout_prob, self.sobel_prob, self.noise_prob) > 0

  @classmethod
  def pretrain(cls, config) -> "ViewSpec":
    """The SimCLR view of `config.augment` (blur here only when blur_on == "data")."""
    return cls._of(config.augment, config)

  @classmethod
  def pretrain_views(cls, config) -> tuple["ViewSpec", "ViewSpec"]:
    """The two views' specs: `config.augment`, and for the second view the same with
    the non-None fields of `config.augment.view2` in their place."""
    a = config.augment
    overrides = {k: v for k, v in a.view2.items() if v is not None}
    return cls._of(a, config), cls._of(dict(a.items(), **overrides), config)

  @classmethod
  def _of(cls, a, config) -> "ViewSpec":
    def pair(key):
      return tuple(float(v) for v in a[key])
    return cls(image_size=int(config.data.image_size), crop=bool(a["crop"]),
               area_range=pair("area_range"), aspect_ratio_range=pair("aspect_ratio_range"),
               flip=bool(a["flip"]), color_jitter_prob=float(a["color_jitter_prob"]),
               color_strength=float(a["color_strength"]), jitter_impl=str(a["jitter_impl"]),
               color_random_order=bool(a["color_random_order"]),
               grayscale_prob=float(a["grayscale_prob"]),
               blur=bool(a["blur"]) and config.augment.blur_on == "data",
               blur_prob=float(a["blur_prob"]), blur_sigma_range=pair("blur_sigma_range"),
               blur_kernel_fraction=float(a["blur_kernel_fraction"]),
               rotate_prob=float(a["rotate_prob"]), cutout_prob=float(a["cutout_prob"]),
               cutout_size_range=pair("cutout_size_range"), sobel_prob=float(a["sobel_prob"]),
               noise_prob=float(a["noise_prob"]), noise_sigma_range=pair("noise_sigma_range"))

  @classmethod
  def crop_flip(cls, config) -> "ViewSpec":
    """Linear-eval / fine-tune training view: random resized crop and flip only (reads
    augment.crop, area_range, aspect_ratio_range and flip, all an evaluation config has)."""
    a = config.augment
    return cls(image_size=int(config.data.image_size), crop=bool(a.crop),
               area_range=tuple(float(v) for v in a.area_range),
               aspect_ratio_range=tuple(float(v) for v in a.aspect_ratio_range),
               flip=bool(a.flip), color_jitter_prob=0.0, grayscale_prob=0.0)


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
  shape = [num_views, spec.num_uniforms if crop_attempts else NUM_EXTRA]
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

