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
- Figure 4's other operators (rotation, cutout, Sobel, noise: `operators`) follow, on
  whole batches, from a random stream of their own; off, they cost nothing.
- Each view has its spec (`ViewSpec.pretrain_views`: config.augment.view2 overrides the
  second's); views with equal specs share one program.
"""

from simclr_jax.augment.color import (GRAY_WEIGHTS, adjust_contrast, adjust_hue,
                                      adjust_saturation, blur_views, finish_views,
                                      to_grayscale)
from simclr_jax.augment.crop import (EVAL_CROP_PROPORTION, crop_resize_batch,
                                     eval_window, resize_matrix, sample_crop_window)
from simclr_jax.augment.spec import (JITTER_IMPLS, ViewSpec, blur_radius, color_params,
                                     flip_draw, gaussian_kernel, view_uniforms)
from simclr_jax.augment.operators import (NUM_OPERATOR_UNIFORMS, SOBEL_SCALE, apply_operators,
                                          apply_view_operators, cutout, operator_params,
                                          operator_seeds, operator_uniforms, rotate90, sobel)
from simclr_jax.augment.views import (augment_fixed_batch, augment_fixed_views, crop_box,
                                      crop_seed, decode_views, eval_view)
