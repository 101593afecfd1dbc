"""Import of official SimCLR TF1 checkpoints (simclr_jax.convert) against the official code.

The fixtures (tests/fixtures/official/, made by make_official_fixtures.py with the
official TF1 resnet.py/model_util.py) hold small random networks saved as the released
checkpoints are laid out, and that network's outputs on fixed images in inference mode,
for the plain and the `ema_model/` weights.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from simclr_jax import convert
from simclr_jax import export
from simclr_jax import finetune
from simclr_jax import pretrained as pretrained_lib

FIXTURES = Path(__file__).parent / "fixtures" / "official"
ROOT = Path(__file__).parent.parent

# case: (the inferred model fields it must give, EMA copy present, --ft_proj_selector)
CASES = {
    "r50_sk0": (dict(depth=50, width_multiplier=0.03125, cifar_stem=False, sk_ratio=0.0,
                     se_ratio=0.0, head_mode="nonlinear", head_num_layers=3, proj_dim=16,
                     num_classes=10, probe_from_projection_layer=0), True, 0),
    "r50_sk1": (dict(depth=50, width_multiplier=0.03125, cifar_stem=False, sk_ratio=0.0625,
                     se_ratio=0.0, head_num_layers=3, num_classes=10), True, 0),
    "r50_sk1_se_cifar": (dict(depth=50, cifar_stem=True, sk_ratio=0.0625, se_ratio=0.25,
                              num_classes=7, probe_from_projection_layer=1), True, 1),
    "r18_se_cifar": (dict(depth=18, width_multiplier=0.0625, cifar_stem=True, sk_ratio=0.0,
                          se_ratio=0.25, head_num_layers=2, proj_dim=8, num_classes=0),
                     False, 0),
}
ENDPOINTS = ("initial_conv", "initial_max_pool", "block_group1", "block_group2",
             "block_group3", "block_group4", "final_avg_pool", "z", "logits_sup")


def assert_close(got, want, what):
  """Float32 agreement: |got - want| <= 1e-5 x the output's scale (max |want|)."""
  scale = float(np.abs(want).max())
  assert scale > 1e-3, f"{what}: degenerate reference"
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=what)


@functools.lru_cache(maxsize=None)
def _endpoints_fn(case: str):
  spec, _, _ = convert.convert(str(FIXTURES / case), ft_proj_selector=CASES[case][2])
  model = export.build_model(spec)
  return jax.jit(lambda v, x: model.apply(v, x, method="endpoints"))


@pytest.mark.parametrize("case,ema", [(c, e) for c, (_, has_ema, _) in CASES.items()
                                      for e in ((False, True) if has_ema else (False,))])
def test_reproduces_the_official_network(case, ema):
  fields, _, ft_proj_selector = CASES[case]
  spec, variables, source = convert.convert(str(FIXTURES / case), ema=ema,
                                            ft_proj_selector=ft_proj_selector)
  assert {k: spec[k] for k in fields} == fields
  ref = np.load(FIXTURES / case / "official_outputs.npz")
  out = _endpoints_fn(case)(variables, ref["images"])
  tag = "ema_" if ema else ""
  compared = [k for k in ENDPOINTS if tag + k in ref]
  assert len(compared) == (3 if ema else 9) - (spec["num_classes"] == 0)
  for k in compared:
    assert_close(np.asarray(out[k]), ref[tag + k], f"{case} {tag}{k}")
  # The other copy of the weights gives other outputs: the copy chosen matters.
  other = "final_avg_pool" if ema else "ema_final_avg_pool"
  if other in ref:
    assert np.abs(np.asarray(out["h"]) - ref[other]).max() > 1e-2
  assert json.loads(json.dumps(source)) == source  # goes into model.json as is
  assert source["weights"] == ("ema_model" if ema else "model")
  assert source["global_step"] == 1234 and source["other_variables_left_out"] == []
  left = source["variables_left_out"]
  assert left["other copy"] == (source["variables_used"] if CASES[case][1] else 0)
  assert left["optimizer slots"] == (100 if case == "r18_se_cifar" else 0)


# ----------------------------------------------------------------------------------
# Checkpoints that are not (quite) SimCLR's.


def _tensors(case: str) -> dict[str, np.ndarray]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(str(FIXTURES / case))
  return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def _write(prefix: Path, tensors: dict[str, np.ndarray]) -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return str(prefix)


def _edit(t, drop=(), add=None):
  t = {k: v for k, v in t.items() if k not in drop}
  t.update(add or {})
  return t


K = np.zeros((3, 3, 4, 4), np.float32)
BAD = {
    "missing_conv": (dict(drop=["base_model/conv2d_5/kernel"]),
                     "missing ['base_model/conv2d_5/kernel']"),
    "unexpected_conv": (dict(add={"base_model/conv2d_99/kernel": K}),
                        "not use ['base_model/conv2d_99/kernel']"),
    "unexpected_head": (dict(add={"head_contrastive/nl_0/dense/bias": np.zeros(32, np.float32)}),
                        "unexpected variable head_contrastive/nl_0/dense/bias"),
    "missing_head_bn": (dict(drop=["head_contrastive/nl_0/batch_normalization/gamma"]),
                        "missing variable head_contrastive/nl_0/batch_normalization/gamma"),
    "wrong_shape": (dict(add={"base_model/conv2d_3/kernel": np.zeros((3, 3, 4, 5), np.float32)}),
                    "variable base_model/conv2d_3/kernel has shape [3, 3, 4, 5]"),
}


@pytest.fixture(scope="module")
def r18_tensors():
  return _tensors("r18_se_cifar")


@pytest.mark.parametrize("name", sorted(BAD))
def test_refuses_what_does_not_fit(name, r18_tensors, tmp_path):
  edit, message = BAD[name]
  prefix = _write(tmp_path / "model.ckpt-1", _edit(r18_tensors, **edit))
  with pytest.raises(convert.ConvertError, match=message.replace("[", r"\[")):
    convert.convert(prefix)


def test_rewritten_checkpoint_converts_and_lists_other_variables(r18_tensors, tmp_path):
  """The control of the test above: the same rewriting, nothing broken, converts."""
  extra = {"memory/bank": np.zeros((4, 8), np.float32),
           "base_model/conv2d/kernel/Adam": r18_tensors["base_model/conv2d/kernel"]}
  prefix = _write(tmp_path / "model.ckpt-1", _edit(r18_tensors, add=extra))
  spec, _, source = convert.convert(prefix)
  assert spec["depth"] == 18 and source["other_variables_left_out"] == ["memory/bank"]
  assert source["variables_left_out"]["optimizer slots"] == 101


def test_checkpoint_without_projection_head_gives_head_none(r18_tensors, tmp_path):
  """The released v1 checkpoints have no projection head: z = h."""
  tensors = {k: v for k, v in r18_tensors.items() if not k.startswith("head_contrastive/")}
  spec, variables, _ = convert.convert(_write(tmp_path / "model.ckpt-1", tensors))
  assert spec["head_mode"] == "none" and spec["depth"] == 18
  assert set(variables["params"]) == {"encoder"}


def test_refuses_unreadable_and_foreign_checkpoints(r18_tensors, tmp_path):
  with pytest.raises(convert.ConvertError, match="no base_model/ variables"):
    convert.convert(_write(tmp_path / "foreign", {"dense/kernel": np.zeros((2, 2))}))
  with pytest.raises(convert.ConvertError, match="no ema_model/ variables"):
    convert.convert(str(FIXTURES / "r18_se_cifar"), ema=True)
  with pytest.raises(convert.ConvertError, match=r"no .*missing\.index"):
    convert.convert(str(tmp_path / "missing"))
  with pytest.raises(convert.ConvertError, match="without a TF1 `checkpoint` file"):
    convert.convert(str(tmp_path))
  cut = tmp_path / "cut"
  shutil.copytree(FIXTURES / "r18_se_cifar", cut)
  data = next(cut.glob("*.data-*"))
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
  with pytest.raises(convert.ConvertError, match="cannot read"):
    convert.convert(str(cut))


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
  out = tmp_path / "out"
  assert convert.main([f"--checkpoint={tmp_path / 'nothing'}", f"--out={out}"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: --checkpoint=") and "\n" not in err
  assert not out.exists()
  assert convert.main([f"--checkpoint={FIXTURES / 'r50_sk0'}", f"--out={out}",
                       "--image_size=16"]) == 2
  assert "--image_size=16 is not allowed" in capsys.readouterr().err
  assert not out.exists()
  (out / "mine").mkdir(parents=True)
  with pytest.raises(SystemExit) as e:
    convert.main([f"--checkpoint={FIXTURES / 'r50_sk0'}", f"--out={out}"])
  assert e.value.code == 2 and "is not an export directory" in capsys.readouterr().err
  assert os.listdir(out) == ["mine"]


# ----------------------------------------------------------------------------------
# The command end to end: an export directory every consumer accepts.


@pytest.mark.slow
def test_cli_writes_an_export_that_loads_serves_and_finetunes(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  case = "r50_sk1_se_cifar"
  out = tmp_path / "imported"
  proc = subprocess.run(
      [sys.executable, "-m", "simclr_jax.convert", f"--checkpoint={FIXTURES / case}",
       f"--out={out}", "--ema", "--ft_proj_selector=1", "--image_size=32",
       "--platforms=cpu"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  ref = np.load(FIXTURES / case / "official_outputs.npz")
  images = ref["images"]
  spec = export.read_spec(str(out))
  assert spec["source"]["weights"] == "ema_model" and "logits_sup" in spec["outputs"]
  assert spec["model"]["sk_ratio"] == 0.0625 and spec["model"]["probe_from_projection_layer"] == 1
  # The command reloads each artifact (load_encoder's too) against the converted network,
  # which the tests above hold to the official one.
  errors = proc.stdout.split("max relative error of h, z, logits_sup: ")[1].split(", ")
  assert sorted(e.split()[0] for e in errors) == ["jax_export", "saved_model", "variables"]
  assert all(float(e.split()[1]) < 1e-5 for e in errors), errors
  serve = export.load_saved_model(str(out)).signatures["serving_default"]
  got = {k: v.numpy() for k, v in serve(images=tf.constant(images)).items()}
  assert {"h", "z", "logits_sup", "block_group4", "initial_max_pool"} <= set(got)
  for k in ("z", "logits_sup"):
    assert_close(got[k], ref[f"ema_{k}"], f"SavedModel {k}")
  assert_close(got["block_group4"].mean(axis=(1, 2)), ref["ema_final_avg_pool"],
               "SavedModel block_group4")

  # As init_from of the evaluation modes: fine-tuning from projection layer 1 with the
  # imported supervised head as its classifier is the official fine-tuned network.
  pre = pretrained_lib.load_pretrained(str(out))
  assert "classifier" not in pre.variables["params"] and pre.config.data.image_size == 32
  net = finetune.FinetuneNet(model_config=pre.model_config.to_dict(), num_classes=7,
                             head_layers=1)
  variables = finetune.finetune_variables(net, pre.variables, 32, seed=0)
  _, imported, _ = export.load_variables(str(out))
  variables["params"]["classifier"] = imported["params"]["classifier"]
  logits = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, images)
  assert_close(np.asarray(logits), ref["ema_logits_sup"], "fine-tuning network")
