"""A small custom image folder from the command line: fewer than 5 classes, a class
with fewer training images than evals.linear_probes.shots and a damaged JPEG. Pretraining
runs to the end with its evaluations, says once at the start what it skips, and reports
the damaged file once."""

import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_jax import metric_log
from tests import cli

pytestmark = pytest.mark.slow


def write_images(root: str, counts: dict[str, int]) -> None:
  rng = np.random.default_rng(0)
  for name, count in counts.items():
    os.makedirs(os.path.join(root, name))
    for i in range(count):
      image = rng.integers(0, 256, [20, 20, 3]).astype(np.uint8)
      data = (tf.io.encode_jpeg(image) if i % 2 else tf.io.encode_png(image)).numpy()
      with open(os.path.join(root, name, f"{i}.{'jpg' if i % 2 else 'png'}"), "wb") as f:
        f.write(data)


def test_small_folder_pretrains_and_skips_what_it_cannot_evaluate(tmp_path):
  root = str(tmp_path / "images")
  # 3 classes; 1 of each held out for test: eel keeps 2 training images (< 5 shots).
  write_images(root, {"cat": 12, "dog": 12, "eel": 3})
  jpeg = tf.io.encode_jpeg(np.zeros([64, 64, 3], np.uint8) + 128).numpy()
  broken = os.path.join(root, "cat", "broken.jpg")
  with open(broken, "wb") as f:
    f.write(jpeg[:len(jpeg) // 2])  # a truncated JPEG: right magic, damaged data
  workdir = str(tmp_path / "run")
  proc = cli.run_main("configs/digits.py", workdir, *cli.TINY, f"--config.dataset=folder:{root}",
                      "--config.batch_size=8", "--config.eval_batch_size=8",
                      "--config.num_train_steps=4",
                      "--config.evals.online_probe.every_steps=2",
                      "--config.checkpoint_every_steps=2", "--config.log_every_steps=2",
                      "--config.evals.linear_probes.every_steps=0",
                      "--config.evals.linear_probes.draws=2",
                      "--config.evals.linear_probes.random_init_baseline=False")
  out = proc.stderr
  assert "'folder:" + root + "' has 3 classes: top-5 accuracy is not reported" in out
  assert ("1 class(es) of split 'train' have fewer than evals.linear_probes.shots = 5 images "
          "(eel: 2): the final 5-shot probe is skipped") in out
  assert out.count("skipped 1 file(s) that are not decodable images") == 1
  assert broken in out
  for noise in ("Premature end of JPEG", "Ignoring error", "Corrupt JPEG"):
    assert noise not in out, noise
  records = metric_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in records if "eval_probe_top1" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert not any("eval_probe_top5" in r for r in records)
  final = records[-1]
  assert 0.0 <= final["linear_probe_top1"] <= 1.0
  assert not any("shot" in k for k in final)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
