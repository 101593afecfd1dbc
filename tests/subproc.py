"""Runs test workers in a fresh Python process with N virtual CPU devices."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_worker(script: str, *args: str, devices: int = 8, timeout: int = 600,
               env: dict | None = None) -> str:
  """Runs tests/workers/<script> with `devices` CPU devices; returns its stdout.

  Raises AssertionError with the worker's output when it fails.
  """
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
                  XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                  TF_CPP_MIN_LOG_LEVEL="2")
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "workers", script), *args],
                        env=full_env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
  if proc.returncode != 0:
    raise AssertionError(f"worker {script} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
  return proc.stdout
