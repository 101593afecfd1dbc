"""Input-pipeline throughput: source images per second (two SimCLR views each).

Cases, each on all host cores (tf.data AUTOTUNE), after a warm-up, median of timed
windows:
  cifar:         32x32 uint8 images in memory (a cached CIFAR), CIFAR augmentations
                 (crop, flip, colour s = 0.5, grayscale; no blur), 32 px views.
  imagenet:      ~400x350 JPEGs (quality 90) decoded and augmented to 224 px
                 (colour s = 1.0), blur left for the accelerator (blur_on = "device").
  imagenet_blur: the same with the blur run here on the CPU (blur_on = "data").
The images are crops of the photographs that ship with scikit-learn.

--reference runs the same cases through a per-image pipeline written like the official
TF SimCLR code (tf.image ops per example, full decode, blur by depthwise convolution),
for a comparison under the same machine load.

  python bench/input_pipeline.py [--json PATH] [--reference | --compare]
      [--cases cifar,imagenet,imagenet_blur]

--compare times both pipelines, one after the other for each case, and writes the
reference's medians too (keys prefixed "reference_").

--paired runs both pipelines in one process and alternates between them in short
rounds (drain what each had buffered, time a chunk of batches, rest so that the idle
one refills uncharged), comparing the CPU time per image within each round. This VM's
speed drifts by +-20% over minutes, which swamps sequential A/B runs; a ratio taken
within rounds does not drift with it. Keys "paired_<case>_cpu_ratio" (reference CPU
per image / simclr_jax's), with the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import base  # noqa: E402
from simclr_jax import augment  # noqa: E402
from simclr_jax import data as ip  # noqa: E402

KEYS = {"cifar": "cifar_images_per_s", "imagenet": "imagenet_images_per_s",
        "imagenet_blur": "imagenet_blur_cpu_images_per_s"}


def cifar_source(n: int = 8192) -> ip.ArraySource:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, [n, 32, 32, 3], dtype=np.uint8)
  return ip.ArraySource(images, rng.integers(0, 10, n), 10, name="cifar-like")


def jpeg_source(n: int = 512) -> ip.ArraySource:
  """n distinct ~400x350 (w x h) quality-90 JPEGs cut from scikit-learn's photos."""
  from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel
  photos = load_sample_images().images
  rng = np.random.default_rng(0)
  encoded = []
  for i in range(n):
    photo = photos[i % len(photos)]
    h, w = 350 + int(rng.integers(-20, 21)), 400 + int(rng.integers(-20, 21))
    y = int(rng.integers(0, photo.shape[0] - h + 1))
    x = int(rng.integers(0, photo.shape[1] - w + 1))
    image = photo[y:y + h, x:x + w]
    image = image[:, ::-1] if i % 2 else image
    encoded.append(tf.io.encode_jpeg(np.ascontiguousarray(image), quality=90).numpy())
  return ip.ArraySource(np.array(encoded, dtype=object), rng.integers(0, 1000, n), 1000,
                        name="imagenet-like")


def case_config(case: str, batch_size: int):
  c = base.get_config()
  c.batch_size = batch_size
  c.train_split = "train"
  c.data.cache = True
  c.data.shuffle_buffer = 1024
  if case == "cifar":
    c.data.image_size, c.augment.color_strength, c.augment.blur = 32, 0.5, False
  else:
    c.data.image_size, c.augment.color_strength, c.augment.blur = 224, 1.0, True
    c.augment.blur_on = "data" if case == "imagenet_blur" else "device"
  return c


# ----------------------------------------------------------------------------------
# The per-image pipeline, as the official code structures it (for --reference)


def _reference_view(image, spec: augment.ViewSpec):
  """One view, tf.image ops on one image in [0, 1]: the official preprocess_for_train."""
  size = spec.image_size
  begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
      tf.shape(image), tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
      min_object_covered=0.1, aspect_ratio_range=spec.aspect_ratio_range,
      area_range=spec.area_range, max_attempts=100, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop_size)
  image = tf.image.resize([image], [size, size], method="bicubic")[0]
  image = tf.image.random_flip_left_right(image)
  s = spec.color_strength

  def jitter(x):
    def apply(i, x):
      return tf.cond(
          i < 2,
          lambda: tf.cond(i < 1,
                          lambda: x * tf.random.uniform([], max(0.0, 1 - 0.8 * s), 1 + 0.8 * s),
                          lambda: tf.image.random_contrast(x, 1 - 0.8 * s, 1 + 0.8 * s)),
          lambda: tf.cond(i < 3,
                          lambda: tf.image.random_saturation(x, 1 - 0.8 * s, 1 + 0.8 * s),
                          lambda: tf.image.random_hue(x, 0.2 * s)))
    perm = tf.random.shuffle(tf.range(4))
    for i in range(4):
      x = tf.clip_by_value(apply(perm[i], x), 0.0, 1.0)
    return x

  def maybe(p, fn, x):
    return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)

  image = maybe(spec.color_jitter_prob, jitter, image)
  image = maybe(spec.grayscale_prob,
                lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), image)
  image = tf.clip_by_value(tf.reshape(image, [size, size, 3]), 0.0, 1.0)
  if spec.blur:
    radius = augment.blur_radius(size, spec.blur_kernel_fraction)

    def blur(x):
      k = augment.gaussian_kernel(tf.random.uniform([], *spec.blur_sigma_range), radius)
      x = tf.nn.depthwise_conv2d(x[None], tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1]),
                                 [1, 1, 1, 1], "SAME")
      x = tf.nn.depthwise_conv2d(x, tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1]),
                                 [1, 1, 1, 1], "SAME")
      return tf.clip_by_value(x[0], 0.0, 1.0)
    image = maybe(spec.blur_prob, blur, image)
  return image


def reference_batches(source: ip.ArraySource, config) -> tf.data.Dataset:
  spec = augment.ViewSpec.pretrain(config)

  def preprocess(record, label):
    if source.encoded:
      image = tf.io.decode_jpeg(record, channels=3)
    else:
      image = record
    image = tf.image.convert_image_dtype(image, tf.float32)
    return {"image1": _reference_view(image, spec), "image2": _reference_view(image, spec),
            "label": label}

  ds = source.records("train", (0, 1), shuffle_files=False, seed=0)
  if not source.encoded:
    ds = ds.cache()
  ds = ds.repeat().shuffle(config.data.shuffle_buffer)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(config.batch_size, drop_remainder=True).prefetch(4)


# ----------------------------------------------------------------------------------


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(ds: tf.data.Dataset, batch_size: int, *, warmup_s: float, windows: int,
            window_s: float) -> tuple[float, list[float], float]:
  """(median images/s, all windows' images/s, median images per CPU-second).

  Images per CPU-second (all threads of this process) is what the pipeline would give
  per core with the machine to itself: other processes' load slows the wall clock
  much more than it changes the CPU time an image costs.
  """
  it = iter(ds)
  start = time.perf_counter()
  next(it)  # includes tracing and XLA compilation
  while time.perf_counter() - start < warmup_s:
    next(it)
  rates, per_cpu = [], []
  for _ in range(windows):
    t0, c0, n = time.perf_counter(), _cpu_seconds(), 0
    while time.perf_counter() - t0 < window_s:
      next(it)
      n += batch_size
    rates.append(n / (time.perf_counter() - t0))
    per_cpu.append(n / max(_cpu_seconds() - c0, 1e-9))
  return statistics.median(rates), rates, statistics.median(per_cpu)


def paired(iterators: dict, batch_size: int, *, rounds: int, drain: int, chunk: int,
           rest_s: float) -> dict[str, list[float]]:
  """CPU ms per image of each iterator, one value per round, rounds interleaved."""
  for it in iterators.values():
    for _ in range(drain):  # tracing, compilation, autotuning
      next(it)
  ms = {name: [] for name in iterators}
  for _ in range(rounds):
    for name, it in iterators.items():
      for _ in range(drain):
        next(it)
      c0 = _cpu_seconds()
      for _ in range(chunk):
        next(it)
      ms[name].append((_cpu_seconds() - c0) / (chunk * batch_size) * 1e3)
      time.sleep(rest_s)
  return ms


def _case(case: str, args) -> tuple:
  """(batch size, config, source) of a benchmark case."""
  batch = args.cifar_batch if case == "cifar" else args.imagenet_batch
  return batch, case_config(case, batch), cifar_source() if case == "cifar" else jpeg_source()


def _write_json(path: str | None, results: dict) -> None:
  if path:
    with open(path, "w") as f:
      json.dump(results, f, indent=2)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="cifar,imagenet,imagenet_blur")
  parser.add_argument("--json", default="", help="write the medians here")
  parser.add_argument("--reference", action="store_true",
                      help="the official-style per-image pipeline instead")
  parser.add_argument("--compare", action="store_true",
                      help="both pipelines, case by case")
  parser.add_argument("--paired", action="store_true",
                      help="both pipelines in one process, alternating: CPU ratio")
  parser.add_argument("--rounds", type=int, default=12, help="--paired rounds")
  parser.add_argument("--warmup", type=float, default=10.0, help="seconds")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--window", type=float, default=10.0, help="seconds per window")
  parser.add_argument("--cifar_batch", type=int, default=256)
  parser.add_argument("--imagenet_batch", type=int, default=64)
  args = parser.parse_args(argv)
  results = {}
  if args.paired:
    return _main_paired(args)
  kinds = ["simclr_jax", "reference"] if args.compare else (
      ["reference"] if args.reference else ["simclr_jax"])
  print(f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}; pipelines: {kinds}")
  for case in args.cases.split(","):
    batch, config, source = _case(case, args)
    for kind in kinds:
      if kind == "reference":
        ds = reference_batches(source, config)
      else:
        ds = ip.pretrain_batches(source, config, process_index=0, process_count=1)
      median, rates, per_cpu = measure(ds, batch, warmup_s=args.warmup,
                                       windows=args.windows, window_s=args.window)
      key = KEYS[case] if kind == "simclr_jax" else "reference_" + KEYS[case]
      results[key] = round(median, 1)
      results[key.replace("_per_s", "_per_cpu_s")] = round(per_cpu, 1)
      print(f"{case:14s} {kind:10s} {median:9.1f} images/s (2 views each; windows "
            + ", ".join(f"{r:.0f}" for r in rates)
            + f"), {per_cpu:8.1f} images per CPU-second", flush=True)
  _write_json(args.json, results)
  return results


def _main_paired(args) -> dict:
  results = {}
  print(f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}; paired rounds")
  for case in args.cases.split(","):
    batch, config, source = _case(case, args)
    iterators = {
        "simclr_jax": iter(ip.pretrain_batches(source, config, process_index=0,
                                               process_count=1)),
        "reference": iter(reference_batches(source, config))}
    # Chunks of ~2 s of the faster pipeline; drains longer than any buffer it keeps.
    chunk = 80 if case == "cifar" else 12
    ms = paired(iterators, batch, rounds=args.rounds, drain=chunk, chunk=chunk,
                rest_s=1.5)
    ratios = [r / o for r, o in zip(ms["reference"], ms["simclr_jax"])]
    results[f"paired_{case}_cpu_ratio"] = round(statistics.median(ratios), 3)
    results[f"paired_{case}_cpu_ratios"] = [round(r, 3) for r in ratios]
    for name, values in ms.items():
      results[f"paired_{case}_{name}_cpu_ms_per_image"] = round(statistics.median(values), 4)
    print(f"{case:14s} CPU ms per image: simclr_jax {statistics.median(ms['simclr_jax']):.3f}, "
          f"reference {statistics.median(ms['reference']):.3f}; reference / simclr_jax "
          f"median {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})",
          flush=True)
  _write_json(args.json, results)
  return results


if __name__ == "__main__":
  main()
