"""Putting a completed directory in place of another, which stays whole until then."""

import ctypes
import os
import shutil


def _exchange(a: str, b: str) -> bool:
  """Swaps two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
  the system or file system cannot."""
  renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  if renameat2 is None:
    return False
  at_fdcwd, rename_exchange = -100, 2
  return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b),
                   rename_exchange) == 0


def move_into_place(src: str, dst: str) -> None:
  """Renames directory `src` to `dst`. A directory already at `dst` is swapped out in
  one atomic step (where the file system cannot, renamed aside just before), then
  deleted: `dst` never holds a mix of the two."""
  if not os.path.exists(dst):
    os.rename(src, dst)
    return
  old = f"{src}-old"
  if _exchange(src, dst):
    os.rename(src, old)
  else:
    os.rename(dst, old)
    try:
      os.rename(src, dst)
    except BaseException:
      os.rename(old, dst)
      raise
  shutil.rmtree(old)
