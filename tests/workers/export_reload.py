"""Loads each artifact of an export directory in a fresh process and runs it on images.

Uses only the export directory: `simclr_jax.export.load_encoder`, then plain
`jax.export.deserialize` and plain `tf.saved_model.load`, as a user outside the
training code would.
"""

import os
import sys

from simclr_jax import platform
platform.configure_xla_flags()
import jax
import numpy as np
import tensorflow as tf

from simclr_jax import export


def main(export_dir, images_path, out_path):
  images = np.load(images_path)["images"]
  out = {}
  encode = export.load_encoder(export_dir)
  out["variables/h"] = np.asarray(encode(images))
  out["variables/h_first2"] = np.asarray(encode(images[:2]))  # another batch size

  with open(os.path.join(export_dir, export.JAX_EXPORT_FILE), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  for k, v in exported.call(images).items():
    out[f"jax_export/{k}"] = np.asarray(v)
  out["jax_export/h_first2"] = np.asarray(exported.call(images[:2])["h"])
  out["jax_export/platforms"] = np.array(exported.platforms)

  loaded = tf.saved_model.load(os.path.join(export_dir, export.SAVED_MODEL_DIR))
  serve = loaded.signatures["serving_default"]
  for k, v in serve(images=tf.constant(images)).items():
    out[f"saved_model/{k}"] = v.numpy()
  out["saved_model/h_first2"] = serve(images=tf.constant(images[:2]))["h"].numpy()
  spec = serve.structured_input_signature[1]["images"]
  out["saved_model/input_shape"] = np.array([-1 if d is None else d for d in spec.shape])
  np.savez(out_path, **out)
  # Evidence that nothing imported the training-side modules.
  print("input_pipeline imported:", any(m in ("simclr_jax.input_pipeline", "simclr_jax.data")
                                          or m.startswith("simclr_jax.data.")
                                          for m in sys.modules))


if __name__ == "__main__":
  main(*sys.argv[1:])
