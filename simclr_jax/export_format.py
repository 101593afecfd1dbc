"""The export format: a pretrained encoder as a self-contained directory, its writers,
loaders and checks (written by the `export` mode and by `convert`).

<export dir>/ (default <workdir>/export)
  model.json        format + version, the model config, the input spec, the pretraining
                    step and the SHA-256 of every other file (an imported official
                    checkpoint adds "source", see convert.py); written last, so a
                    directory without it is an unfinished export.
  variables/        Orbax PyTree checkpoint of {"params", "batch_stats"} of the encoder
                    and projection head; `load_encoder(dir)` rebuilds the network from
                    model.json alone and returns a jitted `images -> h`.
  saved_model/      TensorFlow SavedModel, signature "serving_default":
                    images [b, S, S, 3] float32 in [0, 1] -> {"h": [b, C], "z": [b, 128],
                    the official TF-Hub module's outputs (SimCLRModel.endpoints; listed
                    in model.json "outputs") and "logits_sup" for an imported supervised
                    head}, b polymorphic (jax2tf native serialization: StableHLO inside an
                    XlaCallModule op; variables stored as tf.Variables).
  encoder.jax_export  `jax.export` serialization (StableHLO, weights embedded as
                    constants) of the same images -> {"h", "z"} function, b symbolic;
                    `jax.export.deserialize(bytes).call(images)`.

Both compiled artifacts are lowered for config.export.platforms (cpu, cuda, tpu by
default) and run on whichever of those the caller has. The encoder runs in inference
mode (BN running averages); inputs are not normalised (SimCLR feeds [0, 1] images).
"""

import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from simclr_jax import atomic_dir
from simclr_jax import config_lib
from simclr_jax import models

FORMAT = "simclr_jax.export"
VERSION = 1
MODEL_JSON = "model.json"
VARIABLES_DIR = "variables"
SAVED_MODEL_DIR = "saved_model"
JAX_EXPORT_FILE = "encoder.jax_export"
# model.json fields the model is rebuilt from (SimCLRModel's), with the defaults of those
# that exports written before they existed lack. num_classes > 0 only for an imported
# supervised head (convert.py); pretraining exports never keep the online probe.
MODEL_FIELDS = ("depth", "width_multiplier", "cifar_stem", "dtype", "bn_momentum",
                "bn_epsilon", "head_mode", "head_num_layers", "proj_dim", "sk_ratio",
                "se_ratio", "num_classes", "probe_from_projection_layer")
MODEL_DEFAULTS = {"sk_ratio": 0.0, "se_ratio": 0.0, "num_classes": 0,
                  "probe_from_projection_layer": 0}
OUTPUTS = {
    "h": "encoder features (global average pool)",
    "z": "projection-head output (the contrastive space)",
    "initial_conv": "the stem's last conv, before its BN",
    "initial_max_pool": "the stem's output (after the max-pool for the ImageNet stem)",
    **{f"block_group{i}": f"output of ResNet stage {i}" for i in range(1, 5)},
    "final_avg_pool": "= h (official TF-Hub name)",
    "proj_head_output": "= z (official TF-Hub name)",
}


class ExportError(ValueError):
  """An export directory that is missing, unfinished, corrupt or of another format."""


class ExportTargetError(config_lib.ConfigError):
  """config.export.dir names something an export must not replace."""


# ----------------------------------------------------------------------------------
# The exported function.


def model_spec_of(model_config) -> dict:
  """The MODEL_FIELDS of a config.model (or model.json "model"), defaults filled in."""
  return {k: model_config[k] if k in model_config else MODEL_DEFAULTS[k]
          for k in MODEL_FIELDS}


def build_model(model_spec: dict):
  """SimCLRModel (no collective axis) from model.json's "model" entry."""
  spec = model_spec_of(model_spec)
  return models.create_model(ml_collections.ConfigDict(spec),
                             num_classes=spec["num_classes"])


def serving_fn(model, variables: dict) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """images [b, S, S, 3] float32 in [0, 1] -> SimCLRModel.endpoints: {"h": [b, C],
  "z": [b, proj_dim], the TF-Hub-named intermediate outputs, "logits_sup"}, float32."""
  def serve(images):
    return model.apply(variables, images, method="endpoints")
  return serve


def _image_spec(image_size: int) -> jax.ShapeDtypeStruct:
  shape = jax.export.symbolic_shape(f"b, {image_size}, {image_size}, 3")
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def write_jax_export(model, variables: dict, image_size: int, platforms, path: str) -> None:
  exported = jax.export.export(jax.jit(serving_fn(model, variables)),
                               platforms=tuple(platforms))(_image_spec(image_size))
  with open(path, "wb") as f:
    f.write(exported.serialize())


def write_saved_model(model, variables: dict, image_size: int, platforms, path: str) -> None:
  """jax2tf (native serialization) wrapped in a tf.Module with the variables as
  tf.Variables, so the weights live in the SavedModel's variables/, not the graph."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  def apply(variables, images):
    return serving_fn(model, variables)(images)

  tf_apply = jax2tf.convert(apply, polymorphic_shapes=[None, f"(b, {image_size}, "
                                                             f"{image_size}, 3)"],
                            with_gradient=False,
                            native_serialization_platforms=tuple(platforms))
  tf_variables = jax.tree.map(lambda a: tf.Variable(a, trainable=False), variables)
  module = tf.Module()
  module.encoder_variables = tf.nest.flatten(tf_variables)  # tracked -> saved

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
  def serve(images):
    return tf_apply(tf_variables, images)

  module.serve = serve
  tf.saved_model.save(module, path, signatures={"serving_default": serve})


# ----------------------------------------------------------------------------------
# Writing and checking an export directory.


def _files(root: str) -> list[str]:
  found = []
  for dirpath, _, names in os.walk(root):
    found += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
  return sorted(found)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def check_target(export_dir: str) -> None:
  """Raises ExportTargetError unless `export_dir` is free to be (re)written: absent, an
  empty directory, or an earlier export holding only the files its model.json lists."""
  if not os.path.exists(export_dir):
    return
  if not os.path.isdir(export_dir):
    raise ExportTargetError(f"config.export.dir = {export_dir!r} is not allowed: it is a "
                            "file; expected a new or empty directory or an earlier export")
  entries = sorted(os.listdir(export_dir))
  if not entries:
    return
  try:
    spec = read_spec(export_dir) if MODEL_JSON in entries else None
  except ExportError:
    spec = None
  if spec is None:
    raise ExportTargetError(
        f"config.export.dir = {export_dir!r} is not allowed: a non-empty directory that is "
        f"not a simclr_jax export (no valid {MODEL_JSON}), holding e.g. {entries[:3]}; "
        "expected a new or empty directory or an earlier export, which is replaced")
  extra = sorted(set(_files(export_dir)) - set(spec["sha256"]) - {MODEL_JSON})
  if extra:
    raise ExportTargetError(
        f"config.export.dir = {export_dir!r} is not allowed: an earlier export with "
        f"{len(extra)} file(s) it did not write, e.g. {extra[:3]}; move them out or choose "
        "another directory")


def write_export(pretrained, export_dir: str, *, image_size: int,
                 platforms=("cpu", "cuda", "tpu"), extra: dict | None = None) -> dict:
  """Writes all three artifacts of `pretrained` (pretrained.Pretrained) into `export_dir`.

  `export_dir` must be new, empty or an earlier export (`check_target`), which is
  replaced. Everything goes to a sibling temporary directory first, moved into place
  once complete, so a run killed midway leaves the earlier export (or none) under
  `export_dir`, and a failing one removes its temporary directory. `extra` entries are
  added to model.json.
  Returns the model.json contents.
  """
  if jax.process_count() > 1:
    raise RuntimeError(f"export runs in a single process, got {jax.process_count()}")
  export_dir = os.path.abspath(export_dir)
  check_target(export_dir)
  model_spec = model_spec_of(pretrained.model_config)
  model = build_model(model_spec)
  variables = pretrained.variables
  tmp = f"{export_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  t0 = time.time()
  try:
    ocp.PyTreeCheckpointer().save(os.path.join(tmp, VARIABLES_DIR), variables)
    write_saved_model(model, variables, image_size, platforms,
                      os.path.join(tmp, SAVED_MODEL_DIR))
    write_jax_export(model, variables, image_size, platforms,
                     os.path.join(tmp, JAX_EXPORT_FILE))
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "model": model_spec,
        "feature_dim": models.feature_dim(model_spec["depth"],
                                          model_spec["width_multiplier"]),
        "input": {"shape": ["batch", image_size, image_size, 3], "dtype": "float32",
                  "range": [0.0, 1.0], "layout": "NHWC, RGB, no mean/std normalisation"},
        "outputs": {**OUTPUTS, **({"logits_sup": "supervised head's logits (its input: "
                                   "projection-head layer "
                                   f"{model_spec['probe_from_projection_layer']}, 0 = h)"}
                                  if model_spec["num_classes"] else {})},
        "platforms": list(platforms),
        "pretrain_step": pretrained.step,
        "source_checkpoint": pretrained.path,
        "artifacts": {"variables": VARIABLES_DIR, "saved_model": SAVED_MODEL_DIR,
                      "jax_export": JAX_EXPORT_FILE},
        "sha256": {name: _sha256(os.path.join(tmp, name)) for name in _files(tmp)},
        **(extra or {}),
    }
    with open(os.path.join(tmp, MODEL_JSON), "w") as f:
      json.dump(spec, f, indent=2)
    atomic_dir.move_into_place(tmp, export_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("Exported step %d to %s in %.1f s", pretrained.step, export_dir,
               time.time() - t0)
  return spec


def resolve_export_dir(path: str) -> str:
  """An export directory, or a workdir holding one under export/ (absolute: Orbax needs
  absolute paths)."""
  path = os.path.abspath(path)
  if not os.path.exists(os.path.join(path, MODEL_JSON)) and os.path.exists(
      os.path.join(path, "export", MODEL_JSON)):
    return os.path.join(path, "export")
  return path


def read_spec(path: str, artifact: str | None = None) -> dict:
  """model.json of the export at `path`, after checking `artifact`'s files.

  Args:
    path: export directory (or a workdir with export/).
    artifact: "variables" | "saved_model" | "jax_export" | None (no file check).

  Raises:
    ExportError: not an export, unfinished, another format/version, or a file of
      `artifact` missing or different from when it was written.
  """
  path = resolve_export_dir(path)
  if not os.path.isdir(path):
    raise ExportError(f"export directory {path!r} does not exist")
  json_path = os.path.join(path, MODEL_JSON)
  if not os.path.exists(json_path):
    raise ExportError(f"{path!r} is not a complete simclr_jax export: {MODEL_JSON} is "
                      "missing (it is written last; re-run mode=export)")
  try:
    with open(json_path) as f:
      spec = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportError(f"corrupt {json_path}: {e}") from e
  if not isinstance(spec, dict) or spec.get("format") != FORMAT:
    raise ExportError(f"{json_path} is not a {FORMAT} description (format = "
                      f"{spec.get('format') if isinstance(spec, dict) else None!r})")
  if spec.get("version") != VERSION:
    raise ExportError(f"{json_path} has version {spec.get('version')!r}; this code reads "
                      f"version {VERSION}")
  missing = [k for k in ("model", "input", "artifacts", "sha256") if k not in spec]
  if missing:
    raise ExportError(f"corrupt {json_path}: missing fields {missing}")
  if artifact is not None:
    _check_files(path, spec, spec["artifacts"][artifact])
  return {**spec, "path": path}


def _check_files(path: str, spec: dict, prefix: str) -> None:
  expected = {n: h for n, h in spec["sha256"].items()
              if n == prefix or n.startswith(prefix + os.sep)}
  if not expected:
    raise ExportError(f"corrupt {os.path.join(path, MODEL_JSON)}: no files listed for "
                      f"{prefix!r}")
  for name, digest in sorted(expected.items()):
    full = os.path.join(path, name)
    if not os.path.isfile(full):
      raise ExportError(f"export {path!r} is incomplete: {name} is missing")
    if _sha256(full) != digest:
      raise ExportError(f"export {path!r} is corrupt: {name} differs from the file that "
                        "was exported (SHA-256 mismatch); re-run mode=export")


# ----------------------------------------------------------------------------------
# Loading.


def load_variables(path: str) -> tuple[Any, dict, dict]:
  """(model, variables as host arrays, model.json) of the export at `path`."""
  spec = read_spec(path, "variables")
  model = build_model(spec["model"])
  try:
    variables = ocp.PyTreeCheckpointer().restore(
        os.path.join(spec["path"], spec["artifacts"]["variables"]))
  except Exception as e:  # Orbax raises many types for unreadable data
    raise ExportError(f"cannot read the variables of export {spec['path']!r}: {e}") from e
  variables = jax.tree.map(np.asarray, variables)
  return model, variables, spec


def load_encoder(path: str) -> Callable[[jax.Array], jax.Array]:
  """A jitted `images [b, S, S, 3] float32 in [0, 1] -> h [b, C] float32` from an export.

  Needs only the export directory (or a workdir with export/), no training config.
  Like the SavedModel, it takes only the exported side S (model.json "input").
  """
  model, variables, spec = load_variables(path)
  size = spec["input"]["shape"][1]
  encode = jax.jit(lambda images: model.apply(variables, images, train=False,
                                              method="encode"))

  def checked(images):
    if tuple(np.shape(images)[1:]) != (size, size, 3):
      raise ExportError(f"images of shape {list(np.shape(images))} do not fit export "
                        f"{spec['path']!r}: it takes [batch, {size}, {size}, 3] (model.json "
                        "input; config.export.image_size sets it)")
    return encode(images)
  return checked


def load_jax_export(path: str) -> jax.export.Exported:
  """The deserialized jax.export artifact: `.call(images) -> {"h", "z"}`."""
  spec = read_spec(path, "jax_export")
  with open(os.path.join(spec["path"], spec["artifacts"]["jax_export"]), "rb") as f:
    data = f.read()
  try:
    return jax.export.deserialize(bytearray(data))
  except Exception as e:  # flatbuffer / MLIR errors have no common type
    raise ExportError(f"cannot deserialize {JAX_EXPORT_FILE} of export "
                      f"{spec['path']!r}: {e}") from e


def load_saved_model(path: str):
  """The TF SavedModel (tf.saved_model.load); call `.signatures["serving_default"]`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = read_spec(path, "saved_model")
  try:
    return tf.saved_model.load(os.path.join(spec["path"], spec["artifacts"]["saved_model"]))
  except Exception as e:  # TF raises several error types for unreadable protos
    raise ExportError(f"cannot load the SavedModel of export {spec['path']!r}: {e}") from e


# ----------------------------------------------------------------------------------
# The mode.


def verify_export(export_dir: str, model, variables: dict, image_size: int,
                  seed: int = 0, batch: int = 3) -> dict[str, float]:
  """Each reloaded artifact's error on random images against the in-memory encoder:
  max |got - want| / max |want| for h, z and logits_sup (float32 rounding: ~1e-6)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(seed).uniform(
      size=(batch, image_size, image_size, 3)).astype(np.float32)
  want = jax.device_get(jax.jit(serving_fn(model, variables))(images))
  got = {"variables": {"h": np.asarray(load_encoder(export_dir)(images))},
         "jax_export": jax.device_get(load_jax_export(export_dir).call(images))}
  signature = load_saved_model(export_dir).signatures["serving_default"]
  got["saved_model"] = {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}
  return {f"export_{name}_rel_err_{k}":
          float(np.max(np.abs(out[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-30))
          for name, out in got.items() for k in out if k in ("h", "z", "logits_sup")}
