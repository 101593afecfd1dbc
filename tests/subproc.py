"""Runs test workers in a fresh Python process with N virtual CPU devices."""

import os
import subprocess
import sys

from tests import cli


def run_worker(script: str, *args: str, devices: int = 8, timeout: int = 600,
               env: dict | None = None) -> str:
  """Runs tests/workers/<script> with `devices` CPU devices; returns its stdout.

  Raises AssertionError with the worker's output when it fails.
  """
  full_env = dict(cli.env(devices), PYTHONPATH=cli.ROOT)
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, os.path.join(cli.ROOT, "tests", "workers", script),
                         *args],
                        env=full_env, capture_output=True, text=True, timeout=timeout,
                        cwd=cli.ROOT)
  if proc.returncode != 0:
    raise AssertionError(f"worker {script} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
  return proc.stdout
