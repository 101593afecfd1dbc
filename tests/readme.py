"""Runs the README's fenced blocks marked `<!-- tested: NAME -->` as a user would."""

import os
import re
import shlex
import subprocess
import sys

from tests import cli

README = os.path.join(cli.ROOT, "README.md")


def block(name: str) -> str:
  """The fenced block right after the line `<!-- tested: NAME -->`."""
  with open(README) as f:
    text = f.read()
  match = re.search(rf"^<!-- tested: {re.escape(name)} -->\n```\w*\n(.*?)^```", text,
                    re.S | re.M)
  assert match, f"README.md has no block marked <!-- tested: {name} -->"
  return match.group(1)


def run_shell_block(name: str, replacements: dict, main_overrides=(),
                    timeout: int = 600) -> subprocess.CompletedProcess:
  """Runs block `name` with bash: `python` is this interpreter, each README path is
  replaced (`replacements`) and `main_overrides` end each `python main.py` command."""
  script = block(name).replace("\\\n", " ")
  for old, new in replacements.items():
    script = script.replace(old, new)
  extra = " ".join(shlex.quote(o) for o in main_overrides)
  script = re.sub(r"^python main\.py(.*)$", lambda m: f"python main.py{m.group(1)} {extra}",
                  script, flags=re.M)
  script = re.sub(r"^python ", f"{shlex.quote(sys.executable)} ", script, flags=re.M)
  proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cli.ROOT,
                        env=cli.env(), capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"README block {name!r} failed ({proc.returncode}):\n{script}\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
  return proc
