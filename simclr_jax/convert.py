"""Imports an official SimCLR TF1 checkpoint (v1 or v2) as an export directory.

  python -m simclr_jax.convert --checkpoint=PATH --out=DIR [--ema] [--image_size=224]
      [--ft_proj_selector=0] [--platforms=cpu,cuda,tpu]

PATH is a checkpoint prefix (`.../model.ckpt-250228`) or a directory whose `checkpoint`
file names one. The checkpoint is read with `tf.train.load_checkpoint` alone; depth,
width, stem, sk_ratio, se_ratio, projection head and supervised head are inferred from
the variable names and shapes (tf1_layout.py), and every variable of `base_model/`,
`head_contrastive/` and `head_supervised/` must fill exactly one parameter of the
network, with the same shape. `--ema` takes the `ema_model/` copy instead. Optimiser
slots (`/Momentum`, `/Adam`, `/Adam_1`), `global_step`, the copy not selected and any
other top-level variable are left out and listed in model.json ("source").

DIR gets this project's export format (export.py; model.json, variables/, saved_model/,
encoder.jax_export): usable as `init_from` of linear_eval, finetune, knn and export, and
by `export.load_encoder`. The supervised head, when present, gives the "logits_sup"
output; `--ft_proj_selector` (the official flag's meaning) is the projection-head layer it
reads: 0 = h, as in the pretrained and supervised checkpoints; SimCLR v2 fine-tunes from
layer 1.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from simclr_jax import export_format as export
from simclr_jax import tf1_layout as layout
from simclr_jax.models import resnet
from simclr_jax.models import selective_kernel

EMA = "ema_model/"
SK_RATIO_RELEASED = 0.0625  # the released v2 checkpoints' sk_ratio
# Slot variables of the official optimisers (momentum, LARS: Momentum; adam: Adam, Adam_1).
OPTIMIZER_SLOTS = ("Momentum", "Adam", "Adam_1")


class ConvertError(ValueError):
  """A checkpoint this importer cannot map onto the network."""


def is_slot(name: str) -> bool:
  """An optimiser's slot of a variable (`<variable>/Momentum`, ...)."""
  return name.rsplit("/", 1)[-1] in OPTIMIZER_SLOTS and "/" in name


def resolve_checkpoint(path: str) -> str:
  """The checkpoint prefix of `path` (a prefix, or a directory with a `checkpoint` file)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
      raise ConvertError(f"--checkpoint={path!r} is a directory without a TF1 `checkpoint` "
                         "file naming an existing checkpoint: expected a checkpoint prefix "
                         "such as .../model.ckpt-250228 or a directory holding one")
    return prefix
  if not os.path.isfile(path + ".index"):
    raise ConvertError(f"--checkpoint={path!r}: no {path}.index; expected a TF1 checkpoint "
                       "prefix (.../model.ckpt-N) or a directory holding a `checkpoint` file")
  return path


def _read(prefix: str):
  """(reader, {name: shape}) of a TF1 checkpoint."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    reader = tf.train.load_checkpoint(prefix)
    return reader, {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
  except (tf.errors.OpError, ValueError) as e:
    raise ConvertError(f"cannot read checkpoint {prefix!r}: "
                       f"{str(getattr(e, 'message', e)).splitlines()[0]}") from e


def _ratio(pairs: list[tuple[int, int]], floor: int, preferred: float | None, what: str):
  """The ratio r with max(int(f * r), floor) == dim for every (f, dim) of `pairs`."""
  candidates = ([preferred] if preferred else []) + [dim / f for f, dim in pairs]
  for r in candidates:
    if all(max(int(f * r), floor) == dim for f, dim in pairs):
      return r
  raise ConvertError(f"the {what} widths {sorted(set(d for _, d in pairs))} fit no single "
                     "ratio of the block widths: not a SimCLR checkpoint")


def _arch(base: dict[str, tuple]) -> tuple[layout.Arch, layout.Namer]:
  """The architecture whose official variable names are exactly those of base_model/.

  Without SK both stems have one conv + BN: the first kernel's size (7 or 3) tells them
  apart.
  """
  names = set(base)
  best = None
  stem_kernel = base.get(f"{layout.BASE}/conv2d/kernel", (0,))[0]
  for arch in layout.candidate_archs():
    namer = layout.encoder_slots(arch)
    expected = {name for _, name in namer.slots}
    if expected == names and (arch.sk or arch.cifar_stem == (stem_kernel == 3)):
      return arch, namer
    diff = (len(expected ^ names), arch, expected)
    best = diff if best is None or diff[0] < best[0] else best
  _, arch, expected = best
  missing, unexpected = sorted(expected - names), sorted(names - expected)
  raise ConvertError(
      f"the {len(names)} {layout.BASE}/ variables fit no ResNet the official code builds "
      f"(depths {resnet.SUPPORTED_DEPTHS}, SK/SE, either stem); the closest, "
      f"{arch.describe()}, would be missing {missing[:3]}{' ...' if len(missing) > 3 else ''}"
      f" and not use {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")


def infer_model(shapes: dict[str, tuple], prefix: str, ft_proj_selector: int):
  """(model spec for model.json, slots) of the variables named `prefix` + scope/...

  Raises ConvertError when a variable of the three scopes is missing, unexpected or of
  the wrong shape.
  """
  scoped = {n[len(prefix):]: s for n, s in shapes.items() if n.startswith(prefix)}
  base = {n: s for n, s in scoped.items() if n.startswith(layout.BASE + "/")
          and not is_slot(n)}
  if not base:
    raise ConvertError(f"no {prefix}{layout.BASE}/ variables: not a SimCLR TF1 checkpoint")
  arch, namer = _arch(base)
  last_conv = [name for _, name in namer.slots if name.endswith("/kernel")][-1]
  width = base[last_conv][-1] / (2048 if arch.bottleneck else 512)
  width = int(width) if width == int(width) else width
  lookup = dict((path, name) for path, name in namer.slots)
  dim = lambda path: base[lookup[("params", "encoder", *path, "kernel")]][-1]
  sk_ratio = _ratio([(resnet.scaled_width(w, width), dim(p)) for p, w in namer.sk_convs],
                    selective_kernel.SK_MIN_DIM, SK_RATIO_RELEASED, "SK") if arch.sk else 0.0
  se_ratio = _ratio([(resnet.scaled_width(w, width), dim(p)) for p, w in namer.se_convs],
                    1, None, "SE") if arch.se else 0.0

  heads = {n for n in scoped if n.startswith(layout.CONTRASTIVE + "/")
           and not is_slot(n)}
  layers = {n.split("/")[1] for n in heads}
  if not heads:
    mode, num_layers, proj_dim = "none", 1, 128
  else:
    mode = "linear" if layers == {"l_0"} else "nonlinear"
    num_layers = len(layers)
    last = "l_0" if mode == "linear" else f"nl_{num_layers - 1}"
    kernel = f"{layout.CONTRASTIVE}/{last}/dense/kernel"
    if kernel not in scoped:
      raise ConvertError(f"missing variable {prefix}{kernel} (head layers found: "
                         f"{sorted(layers)})")
    proj_dim = scoped[kernel][-1]
  sup_kernel = layout.SUPERVISED_SLOTS[0][1]
  num_classes = scoped[sup_kernel][-1] if sup_kernel in scoped else 0
  spec = {"depth": arch.depth, "width_multiplier": width, "cifar_stem": arch.cifar_stem,
          "dtype": "float32", "bn_momentum": 0.9, "bn_epsilon": 1e-5, "head_mode": mode,
          "head_num_layers": num_layers, "proj_dim": proj_dim, "sk_ratio": sk_ratio,
          "se_ratio": se_ratio, "num_classes": num_classes,
          "probe_from_projection_layer": ft_proj_selector if num_classes else 0}
  slots = namer.slots + layout.head_slots(mode, num_layers)
  if num_classes:
    slots += layout.SUPERVISED_SLOTS
  used = {name for _, name in slots}
  in_scopes = {n for n in scoped if n.split("/")[0] in layout.SCOPES
               and not is_slot(n)}
  for what, names in (("missing", used - set(scoped)), ("unexpected", in_scopes - used)):
    if names:
      raise ConvertError(f"{what} variable {prefix}{sorted(names)[0]} for a "
                         f"{arch.describe()} with a {mode} head"
                         + (f" ({len(names)} in all)" if len(names) > 1 else ""))
  return spec, [(path, prefix + name) for path, name in slots]


def _check_shapes(spec: dict, slots, shapes: dict[str, tuple]) -> None:
  """Every parameter of the network from `spec` has one slot of the same shape."""
  try:
    model = export.build_model(spec)
  except ValueError as e:  # e.g. ft_proj_selector beyond the head's layers
    raise ConvertError(str(e)) from e
  side = resnet.min_image_size(spec["cifar_stem"]) * 2
  want = traverse_util.flatten_dict(jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
      jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)))
  got = dict(slots)
  if set(want) != set(got):
    raise ConvertError(f"the network has parameters {sorted(set(want) - set(got))[:3]} that "
                       f"no variable fills, or variables for {sorted(set(got) - set(want))[:3]}")
  for path, name in slots:
    if tuple(want[path].shape) != shapes[name]:
      raise ConvertError(f"variable {name} has shape {list(shapes[name])}, the network's "
                         f"{'/'.join(path[1:])} {list(want[path].shape)} (a "
                         f"{spec['depth']}-layer, width {spec['width_multiplier']} ResNet)")


def convert(checkpoint: str, *, ema: bool = False, ft_proj_selector: int = 0):
  """(model spec, {"params", "batch_stats"} as numpy, source report) of a checkpoint."""
  prefix = resolve_checkpoint(checkpoint)
  reader, shapes = _read(prefix)
  if ema and not any(n.startswith(EMA) for n in shapes):
    raise ConvertError(f"--ema: checkpoint {prefix!r} has no {EMA} variables (SimCLR v1 "
                       "checkpoints have none)")
  spec, slots = infer_model(shapes, EMA if ema else "", ft_proj_selector)
  _check_shapes(spec, slots, shapes)
  tree = {}
  try:
    for path, name in slots:
      tree[path] = np.asarray(reader.get_tensor(name), np.float32)
  except Exception as e:  # TF raises DataLossError & co. for a truncated data file
    raise ConvertError(f"cannot read variable {name} of {prefix!r}: "
                       f"{str(getattr(e, 'message', e)).splitlines()[0]}") from e
  used = {name for _, name in slots}
  left = sorted(set(shapes) - used)
  kinds = {"global_step": [n for n in left if n == "global_step"],
           "optimizer slots": [n for n in left if is_slot(n)],
           "other copy": [n for n in left if not is_slot(n)
                          and (n.startswith(EMA) != ema)
                          and n.split("/")[1 if n.startswith(EMA) else 0] in layout.SCOPES]}
  other = sorted(set(left) - {n for v in kinds.values() for n in v})
  step = int(reader.get_tensor("global_step")) if "global_step" in shapes else 0
  source = {"checkpoint": os.path.abspath(prefix), "format": "SimCLR TF1 checkpoint",
            "weights": "ema_model" if ema else "model", "global_step": step,
            "variables_used": len(used),
            "variables_left_out": {k: len(v) for k, v in kinds.items()},
            "other_variables_left_out": other}
  return spec, traverse_util.unflatten_dict(tree), source


def _parse(argv):
  parser = argparse.ArgumentParser(prog="python -m simclr_jax.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="TF1 checkpoint prefix or dir")
  parser.add_argument("--out", required=True, help="export directory to write")
  parser.add_argument("--ema", action="store_true", help="use the ema_model/ weights")
  parser.add_argument("--image_size", type=int, default=224,
                      help="input side of the compiled artifacts, px")
  parser.add_argument("--ft_proj_selector", type=int, default=0,
                      help="projection-head layer the supervised head reads (0 = h)")
  parser.add_argument("--platforms", default="cpu,cuda,tpu",
                      help="comma-separated platforms of the compiled artifacts")
  args = parser.parse_args(argv)
  platforms = tuple(p for p in args.platforms.split(",") if p)
  if args.image_size < 1:
    parser.exit(2, f"error: --image_size={args.image_size} is not allowed: expected an "
                   "integer >= 32 (ImageNet stem) or >= 8 (CIFAR stem)\n")
  if args.ft_proj_selector < 0:
    parser.exit(2, f"error: --ft_proj_selector={args.ft_proj_selector} is not allowed: "
                   "expected a projection-head layer >= 0\n")
  if not platforms or set(platforms) - {"cpu", "cuda", "rocm", "tpu"}:
    parser.exit(2, f"error: --platforms={args.platforms!r} is not allowed: expected a "
                   "comma-separated subset of cpu, cuda, rocm, tpu\n")
  out = os.path.abspath(args.out)
  if os.path.exists(out) and not os.path.isfile(os.path.join(out, export.MODEL_JSON)) \
      and (not os.path.isdir(out) or os.listdir(out)):
    parser.exit(2, f"error: --out={args.out!r} is not allowed: it exists and is not an "
                   "export directory (give a new or empty directory)\n")
  return args, platforms


def main(argv=None) -> int:
  args, platforms = _parse(sys.argv[1:] if argv is None else argv)
  t0 = time.time()
  try:
    spec, variables, source = convert(args.checkpoint, ema=args.ema,
                                      ft_proj_selector=args.ft_proj_selector)
    min_side = resnet.min_image_size(spec["cifar_stem"])
    if args.image_size < min_side:
      raise ConvertError(f"--image_size={args.image_size} is not allowed: this network's "
                         f"{'CIFAR' if spec['cifar_stem'] else 'ImageNet'} stem needs >= "
                         f"{min_side} px")
  except ConvertError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # Imported here: the checks above must not pay for Orbax's import.
  from simclr_jax import pretrained as pretrained_lib  # pylint: disable=g-import-not-at-top
  pretrained = pretrained_lib.Pretrained(
      path=source["checkpoint"], step=source["global_step"],
      config=ml_collections.ConfigDict({"model": spec,
                                        "data": {"image_size": args.image_size}}),
      variables=variables)
  export.write_export(pretrained, args.out, image_size=args.image_size, platforms=platforms,
                      extra={"source": source})
  errors = export.verify_export(args.out, export.build_model(spec), variables,
                                args.image_size)
  print(f"Imported {source['checkpoint']} ({source['weights']} weights; ResNet-"
        f"{spec['depth']} width {spec['width_multiplier']}, sk_ratio {spec['sk_ratio']}, "
        f"se_ratio {spec['se_ratio']}, {'CIFAR' if spec['cifar_stem'] else 'ImageNet'} stem, "
        f"{spec['head_mode']} head x{spec['head_num_layers']} -> {spec['proj_dim']}, "
        f"{spec['num_classes']} classes) to {os.path.abspath(args.out)} in "
        f"{time.time() - t0:.1f} s")
  print(f"Left out: {source['variables_left_out']}"
        + (f"; other: {source['other_variables_left_out']}"
           if source["other_variables_left_out"] else ""))
  worst = {}
  for key, err in errors.items():  # export_<artifact>_rel_err_<output>
    artifact = key[len("export_"):].split("_rel_err_")[0]
    worst[artifact] = max(worst.get(artifact, 0.0), err)
  print("Reloaded artifacts, max relative error of h, z, logits_sup: "
        + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
