"""Runs `python main.py ...` as a user would, for the end-to-end tests."""

import os
import signal
import subprocess
import sys
import time

from simclr_jax import metric_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# TINY's data fields: those an evaluation config (configs/base.py) has too.
TINY_DATA = ("--config.data.image_size=16", "--config.eval_batch_size=64",
             "--config.data.deterministic=True")
# A ResNet-18 at 1/8 width on 16 px digits: a few steps take seconds on 2 CPU cores.
TINY = ("--config.model.width_multiplier=0.125", *TINY_DATA, "--config.batch_size=32",
        "--config.evals.linear_probes.every_steps=-1")


def main_command(config: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config}",
          f"--workdir={workdir}", *overrides]


def env(devices: int = 1) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def run_main(config: str, workdir: str, *overrides: str, devices: int = 1,
             timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
  """Runs main.py to completion; raises with its output when `check` and it fails."""
  proc = subprocess.run(main_command(config, workdir, *overrides), env=env(devices),
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  if check and proc.returncode != 0:
    raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-6000:]}")
  return proc


def start_main(config: str, workdir: str, *overrides: str, devices: int = 1):
  return subprocess.Popen(main_command(config, workdir, *overrides), env=env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=ROOT)


def wait_for_step(workdir: str, step: int, proc: subprocess.Popen, timeout: float = 300,
                  key: str = "loss"):
  """Blocks until metrics.jsonl records `key` at `step` (or the process ends)."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"main.py ended early ({proc.returncode}):\n{proc.stdout.read()}")
    if os.path.exists(path) and any(r.get("step", 0) >= step and key in r
                                    for r in metric_log.read_jsonl(path)):
      return
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not reached in {timeout} s")


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> int:
  proc.send_signal(sig)
  return proc.wait(timeout=120)


def losses_by_step(workdir: str) -> dict[int, float]:
  """The training loss of each step; a step run twice (after a resume) keeps the last."""
  records = metric_log.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["loss"] for r in records if "loss" in r}
