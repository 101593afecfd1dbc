"""Export mode: every artifact reproduces the in-framework encoder in a fresh process;
an unfinished or damaged export directory is refused with a clear error."""

import json
import os
import shutil

import numpy as np
import pytest

import jax

from simclr_jax import export
from simclr_jax import export_format
from simclr_jax import metric_log
from simclr_jax import models
from simclr_jax import pretrained as pretrained_lib
from tests.subproc import run_worker

IMAGE_SIZE = 16


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
  """(export dir, the pretrained variables, the mode's results, its workdir)."""
  root = tmp_path_factory.mktemp("export")
  pretrain_dir, variables, config = tiny_checkpoint
  assert config.data.image_size == IMAGE_SIZE
  config = config.copy_and_resolve_references()
  config.mode = "export"
  config.init_from = pretrain_dir
  workdir = str(root / "run")
  results = export.export(config, workdir)
  return os.path.join(workdir, "export"), variables, results, workdir, config


def reference_outputs(config, variables, images):
  """The in-framework encoder on the checkpoint's own weights (not the export's)."""
  model = models.create_model(config.model)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  return {"h": np.asarray(out["h"]), "z": np.asarray(out["z"])}


def assert_close(got, want, what):
  """Float32 agreement: |got - want| <= 1e-5 x the output's scale (max |want|)."""
  scale = float(np.abs(want).max())
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=what)


@pytest.fixture(scope="module")
def reloaded(exported, tmp_path_factory):
  export_dir, variables, _, _, config = exported
  root = tmp_path_factory.mktemp("reload")
  images = np.random.default_rng(7).uniform(
      size=(5, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  np.savez(root / "images.npz", images=images)
  stdout = run_worker("export_reload.py", export_dir, str(root / "images.npz"),
                      str(root / "out.npz"), devices=1, timeout=300)
  return dict(np.load(root / "out.npz")), reference_outputs(config, variables, images), stdout


@pytest.mark.parametrize("artifact", ["variables", "jax_export", "saved_model"])
def test_artifact_reproduces_encoder_in_fresh_process(reloaded, artifact):
  got, want, _ = reloaded
  keys = ["h"] if artifact == "variables" else ["h", "z"]
  for k in keys:
    assert got[f"{artifact}/{k}"].shape == want[k].shape
    assert_close(got[f"{artifact}/{k}"], want[k], f"{artifact} {k}")
  # Batch-size polymorphism: a batch of 2 gives the same rows.
  assert_close(got[f"{artifact}/h_first2"], want["h"][:2], f"{artifact} batch of 2")
  # Outputs vary across images (a broken BN or constant output would not).
  assert np.std(want["h"], axis=0).mean() > 1e-2 * np.abs(want["h"]).max()


def test_loading_needs_no_training_modules(reloaded):
  assert "input_pipeline imported: False" in reloaded[2]


def test_signatures_and_platforms(reloaded, exported):
  got, _, _ = reloaded
  assert got["saved_model/input_shape"].tolist() == [-1, IMAGE_SIZE, IMAGE_SIZE, 3]
  assert set(got["jax_export/platforms"].tolist()) == {"cpu", "cuda", "tpu"}
  spec = export.read_spec(exported[0])
  assert spec["model"]["head_num_layers"] == 3 and spec["feature_dim"] == 64
  assert spec["pretrain_step"] == 7  # the latest checkpoint


def test_mode_checks_itself_and_logs_to_its_own_metrics_file(exported):
  _, _, results, workdir, _ = exported
  diffs = {k: v for k, v in results.items() if "_rel_err_" in k}
  assert len(diffs) == 5  # variables h, jax_export h/z, saved_model h/z
  assert max(diffs.values()) < 1e-5
  # Not metrics.jsonl: run in a pretraining workdir, it would append to pretraining's.
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
  records = metric_log.read_jsonl(os.path.join(workdir, export.EXPORT_METRICS))
  assert records[-1]["export_saved_model_rel_err_z"] == results[
      "export_saved_model_rel_err_z"]


@pytest.fixture
def copy_of(exported, tmp_path):
  def make():
    target = tmp_path / "copy"
    shutil.copytree(exported[0], target)
    return str(target)
  return make


def _first_file(root, sub):
  for dirpath, _, names in sorted(os.walk(os.path.join(root, sub))):
    if names:
      return os.path.join(dirpath, sorted(names)[0])
  raise AssertionError(f"no file under {sub}")


def test_missing_model_json_is_unfinished(copy_of):
  path = copy_of()
  os.remove(os.path.join(path, "model.json"))
  with pytest.raises(export.ExportError, match="model.json is missing"):
    export.load_encoder(path)


def test_garbled_model_json(copy_of):
  path = copy_of()
  with open(os.path.join(path, "model.json"), "w") as f:
    f.write('{"format": "simclr_jax.exp')
  with pytest.raises(export.ExportError, match="corrupt .*model.json"):
    export.load_jax_export(path)


def test_other_format_or_version(copy_of):
  path = copy_of()
  spec = json.load(open(os.path.join(path, "model.json")))
  json.dump({**spec, "version": 99}, open(os.path.join(path, "model.json"), "w"))
  with pytest.raises(export.ExportError, match="version 99"):
    export.load_encoder(path)


@pytest.mark.parametrize("artifact,loader", [
    ("variables", export.load_encoder), ("jax_export", export.load_jax_export),
    ("saved_model", export.load_saved_model)])
def test_truncated_file_is_corrupt(copy_of, artifact, loader):
  path = copy_of()
  victim = (os.path.join(path, export.JAX_EXPORT_FILE) if artifact == "jax_export"
            else _first_file(path, export.read_spec(path)["artifacts"][artifact]))
  size = os.path.getsize(victim)
  with open(victim, "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(export.ExportError, match=f"corrupt: .*{os.path.basename(victim)}"):
    loader(path)


@pytest.mark.parametrize("artifact,loader", [
    ("variables", export.load_encoder), ("saved_model", export.load_saved_model)])
def test_missing_file_is_incomplete(copy_of, artifact, loader):
  path = copy_of()
  victim = _first_file(path, artifact if artifact == "variables" else "saved_model")
  os.remove(victim)
  with pytest.raises(export.ExportError, match="incomplete: .* is missing"):
    loader(path)


def test_encoder_takes_only_the_exported_size_like_the_saved_model(exported):
  path = exported[0]
  wrong = np.zeros((2, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE, 3), np.float32)
  with pytest.raises(export.ExportError,
                     match=f"takes \\[batch, {IMAGE_SIZE}, {IMAGE_SIZE}, 3\\]"):
    export.load_encoder(path)(wrong)
  signature = export.load_saved_model(path).signatures["serving_default"]
  with pytest.raises((TypeError, ValueError)):
    signature(images=wrong)
  right = np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
  assert np.asarray(export.load_encoder(path)(right)).shape[0] == 2


def test_not_an_export(tmp_path):
  with pytest.raises(export.ExportError, match="does not exist"):
    export.load_encoder(str(tmp_path / "nothing"))
  with pytest.raises(export.ExportError, match="model.json is missing"):
    export.load_encoder(str(tmp_path))


def test_workdir_resolves_to_its_export(exported):
  _, _, _, workdir, _ = exported
  assert export.read_spec(workdir)["path"] == os.path.join(workdir, "export")


def test_relative_paths_load(exported, monkeypatch):
  export_dir, variables, _, workdir, _ = exported
  monkeypatch.chdir(os.path.dirname(workdir))
  relative = os.path.join(os.path.basename(workdir), "export")
  _, loaded, spec = export.load_variables(relative)
  assert spec["path"] == export_dir
  np.testing.assert_array_equal(loaded["params"]["encoder"]["stem_conv"]["kernel"],
                                variables["params"]["encoder"]["stem_conv"]["kernel"])
  assert pretrained_lib.load_pretrained(relative).path == export_dir


def test_failed_export_keeps_the_previous_one(exported, tmp_path, monkeypatch):
  export_dir = str(tmp_path / "exp")
  shutil.copytree(exported[0], export_dir)
  before = export.read_spec(export_dir)["sha256"]
  pretrained = pretrained_lib.load_pretrained(exported[4].init_from)

  def broken(*args, **kwargs):
    raise RuntimeError("killed midway")
  monkeypatch.setattr(export_format, "write_jax_export", broken)
  with pytest.raises(RuntimeError, match="killed midway"):
    export.write_export(pretrained, export_dir, image_size=IMAGE_SIZE, platforms=("cpu",))
  assert export.read_spec(export_dir, "jax_export")["sha256"] == before
  assert sorted(os.listdir(tmp_path)) == ["exp"]  # no temporary directory left behind


def _snapshot(root):
  return {name: export_format._sha256(os.path.join(root, name)) for name in export_format._files(root)}


def test_export_refuses_a_directory_it_did_not_write(exported, tmp_path):
  """A pretraining workdir, a user's folder, an export with a user's file in it, a file,
  the workdir itself: refused before anything is read or written, left as they were."""
  _, _, _, workdir, config = exported
  user_dir = tmp_path / "mine"
  os.makedirs(user_dir / "sub")
  (user_dir / "sub" / "notes.txt").write_text("keep me")
  annotated = str(tmp_path / "annotated")
  shutil.copytree(exported[0], annotated)
  with open(os.path.join(annotated, "README"), "w") as f:
    f.write("mine")
  a_file = tmp_path / "file"
  a_file.write_text("x")
  cases = {config.init_from: "not a simclr_jax export", str(user_dir): "not a simclr_jax "
           "export", annotated: r"1 file\(s\) it did not write, e.g. \['README'\]",
           str(a_file): "it is a file"}
  for path, message in cases.items():
    before = _snapshot(path) if os.path.isdir(path) else a_file.read_text()
    config.export.dir = path
    with pytest.raises(export.ExportTargetError,
                       match=f"config.export.dir = '{path}' is not allowed: .*{message}"):
      export.target_dir(config, str(tmp_path / "run"))
    assert (_snapshot(path) if os.path.isdir(path) else a_file.read_text()) == before
  config.export.dir = workdir
  with pytest.raises(export.ExportTargetError, match="it is the workdir"):
    export.target_dir(config, workdir)
  config.export.dir = ""
  assert sorted(os.listdir(tmp_path)) == ["annotated", "file", "mine"]


def test_export_replaces_an_earlier_export(exported, tmp_path):
  export_dir = str(tmp_path / "exp")
  shutil.copytree(exported[0], export_dir)
  pretrained = pretrained_lib.load_pretrained(exported[4].init_from)
  spec = export.write_export(pretrained, export_dir, image_size=24, platforms=("cpu",))
  assert export.read_spec(export_dir, "jax_export")["input"]["shape"][1] == 24
  assert spec["platforms"] == ["cpu"]
  assert sorted(os.listdir(tmp_path)) == ["exp"]  # no temporary or old directory left
