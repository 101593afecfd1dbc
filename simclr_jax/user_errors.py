"""A user's mistake on the command line ends in one line on stderr and exit status 2.

`parse_flags` (app.run's flags_parser) turns what absl and ml_collections raise for a bad
flag, config file or `--config.<field>` override into one such line; `check_workdir` and
`check_dataset` run before anything is written. `--verbose` shows the traceback instead.
"""

import difflib
import importlib.util
import os
import re
import sys

from absl import flags

from simclr_jax.config_lib import ConfigError

EXIT_STATUS = 2
_OVERRIDE = re.compile(r"--config\.([\w.]+)")


def verbose(argv) -> bool:
  return any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for a in argv)


def exit_with(error: Exception) -> None:
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


def parse_flags(argv, flag_values=flags.FLAGS):
  """absl's flag parsing, with each failure reported as one line (exit 2)."""
  try:
    remaining = flag_values(argv)
    flag_values.config.keys()  # a missing config file raises only when first read
    return remaining
  except Exception as e:  # pylint: disable=broad-except  (all of them are the user's input)
    if verbose(argv):
      raise
    exit_with(ConfigError(describe(e, argv, flag_values)))


def describe(error: Exception, argv, flag_values=flags.FLAGS) -> str:
  """One line naming the flag, its value and what is allowed."""
  text = str(error)
  if isinstance(error, (AttributeError, KeyError)):
    return _unknown_field(text, argv, flag_values)
  bad_value = re.match(r"flag --([\w.]+)=(.*?): (.*)", text, re.DOTALL)
  if bad_value:
    name, value, reason = bad_value.groups()
    if "must have a value other than None" in reason:
      return f"--{name} is required"
    if name == "config":
      return f"--config={value}: the config file failed to load: {_last_line(reason)}"
    if not name.startswith("config."):
      return f"--{name} = {value!r} is not allowed: {_last_line(reason)}"
    expected = _field_type(flag_values, argv, name)
    return (f"config.{name.removeprefix('config.')} = {value!r} is not allowed: "
            f"expected {expected or _last_line(reason)}")
  missing = re.search(r"No such file or directory: '(.*)'", text)
  if isinstance(error, OSError) and missing:
    return (f"--config = {missing.group(1)!r} is not allowed: no such file (expected a "
            "config file such as configs/digits.py)")
  if isinstance(error, flags.Error):
    return _last_line(text)
  return f"--config: {type(error).__name__}: {_last_line(text)}"


def _last_line(text: str) -> str:
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else text


def _config(flag_values, argv):
  """The config file's ConfigDict (the flag holds none when an override failed)."""
  value = flag_values["config"].value
  if value is not None:
    return value
  files = [a.removeprefix("--config=") for a in argv if a.startswith("--config=")]
  try:
    path, *args = files[-1].split(":")
    spec = importlib.util.spec_from_file_location("_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
  except Exception:  # pylint: disable=broad-except  (then the message names no fields)
    return None


def _field_type(flag_values, argv, name: str) -> str | None:
  node = _config(flag_values, argv)
  try:
    for part in name.split(".")[1:]:
      node = node[part]
  except (KeyError, TypeError, AttributeError):
    return None
  return None if node is None else f"a value of type {type(node).__name__}"


def _unknown_field(text: str, argv, flag_values) -> str:
  """Names the first --config.<path> override whose path the config does not have."""
  config = _config(flag_values, argv)
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if not match or config is None:
      continue
    node, parent = config, ["config"]
    for part in match.group(1).split("."):
      if not hasattr(node, "keys"):
        break
      if part not in node:
        fields = sorted(node.keys())
        close = difflib.get_close_matches(part, fields, n=3)
        allowed = (f"did you mean {' or '.join(map(repr, close))}?" if close
                   else f"its fields are {fields}")
        return f"{arg}: {'.'.join(parent)} has no field {part!r}; {allowed}"
      node, parent = node[part], parent + [part]
  return f"unknown config field: {_last_line(text)}"


def check_workdir(workdir: str) -> None:
  """--workdir must be a folder or creatable as one (no file in the way)."""
  path = os.path.abspath(workdir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ConfigError(f"--workdir = {workdir!r} is not allowed: {path} is a file; expected "
                      "a folder (created when missing)")


def check_dataset(name: str) -> None:
  """config.dataset names a tfds dataset, "digits" or an existing "folder:/path"."""
  allowed = "expected a tensorflow-datasets name, 'digits' or 'folder:/path'"
  if name == "digits":
    return
  if name.startswith("folder:"):
    if not os.path.isdir(name.removeprefix("folder:")):
      raise ConfigError(f"config.dataset = {name!r} is not allowed: "
                        f"{name.removeprefix('folder:')!r} is not a folder")
    return
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  base = re.split(r"[/:]", name, maxsplit=1)[0]
  known = tfds.list_builders(with_community_datasets=False)
  if base not in known:
    close = difflib.get_close_matches(base, known, n=3)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise ConfigError(f"config.dataset = {name!r} is not allowed: {allowed}{hint}")
