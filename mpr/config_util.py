"""Helpers for `experiments/configs/*.py` (the big_vision pattern: configs are Python).

`parse_arg("split=valid_seen,runlocal", split="valid_seen", runlocal=False)` turns the `:arg` suffix of
`--config file.py:arg` into a ConfigDict with typed fields (the type of each default), so a config
file can offer named variants without string parsing of its own.
"""
from __future__ import annotations

import ml_collections

from mpr.errors import UserError


def _cast(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() in ("", "1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise UserError(f"config arg {key}={value!r}: expected a boolean")
  try:
    return type(default)(value)
  except ValueError:
    raise UserError(f"config arg {key}={value!r}: expected {type(default).__name__}") from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a=1,flag,b=x' against typed defaults; unknown keys are an error."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise UserError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    out[key] = _cast(key, value if "=" in item else "true", defaults[key])
  return ml_collections.ConfigDict(out)


def env_config(**overrides) -> ml_collections.ConfigDict:
  """The `env` section shared by every experiment: where games come from and how they are played."""
  c = ml_collections.ConfigDict()
  c.source = "auto"           # auto | real | generated (mpr.envs.games.find_games)
  c.data_dir = ""             # '' = $ALFWORLD_DATA
  c.generated_dir = ""        # '' = ~/.cache/mpr/generated
  c.task_types = ()           # () = all six
  c.max_steps = 50            # the ALFWorld convention of the paper
  c.num_workers = 2           # env worker processes
  c.num_slots = 8             # episodes in flight (≥ workers so device batches stay full)
  c.step_timeout = 60.0       # seconds before a hung worker is restarted
  c.update(overrides)
  return c
