"""User-facing errors: `launch.py` and each module's command line print these as one line, exit status 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UserError(Exception):
  """Bad input from the user (paths, data, config values, checkpoints): never a silent default."""


def one_line_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
  """Decorates a command line's main: a UserError it raises becomes `prog: error: ...` on stderr, status 2."""
  def wrap(main: Callable[..., int]) -> Callable[..., int]:
    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
      try:
        return main(*args, **kwargs)
      except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return run
  return wrap
