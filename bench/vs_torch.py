r"""The CPU train step against PyTorch eager, interleaved in one sequence.

  python bench/vs_torch.py --rounds=3 --json=bench/results/cpu_vs_torch.json

Each round runs, one after the other as separate processes (so they never share the
cores): bench/train_step.py (resnet18_cifar preset, float32, 1 device) and
bench/torch_reference.py in both of PyTorch's layouts. On a shared VM whose speed
drifts by tens of percent over minutes, only ratios within a round compare fairly.
Needs torch (`pip install torch`), which the project itself does not.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 3, "Rounds of (JAX, torch NCHW, torch NHWC).")
flags.DEFINE_integer("batch_size", 64, "Source images (2 views each).")
flags.DEFINE_integer("steps", 7, "Timed steps per run (the median counts).")
flags.DEFINE_string("json", None, "Write the results here as JSON.")

_HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = {
    "simclr_jax": ["train_step.py", "--preset=resnet18_cifar", "--dtype=float32",
                   "--devices=1", "--warmup=2"],
    "torch_nchw": ["torch_reference.py", "--memory_format=contiguous", "--warmup=2"],
    "torch_nhwc": ["torch_reference.py", "--memory_format=channels_last", "--warmup=2"],
}


def run_median(name: str) -> float:
  """Median step seconds of one run of RUNS[name], in its own process."""
  script, *args = RUNS[name]
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "result.json")
    subprocess.run([sys.executable, os.path.join(_HERE, script), *args,
                    f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
                    f"--json={out}"], check=True, capture_output=True)
    with open(out) as f:
      return json.load(f)["step_s_median"]


def ratio_to_best_torch(row: dict[str, float]) -> float:
  return row["simclr_jax"] / min(row["torch_nchw"], row["torch_nhwc"])


def main(argv):
  del argv
  rounds = []
  for r in range(FLAGS.rounds):
    rounds.append({name: run_median(name) for name in RUNS})
    print(f"round {r + 1}: " + ", ".join(f"{k} {v:.3f} s" for k, v in rounds[-1].items())
          + f"; simclr_jax / best torch {ratio_to_best_torch(rounds[-1]):.2f}", flush=True)
  ratios = [ratio_to_best_torch(row) for row in rounds]
  print(f"median ratio simclr_jax / best torch: {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump({"batch_size": FLAGS.batch_size, "steps": FLAGS.steps, "rounds": rounds,
                 "ratio_to_best_torch": ratios}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
