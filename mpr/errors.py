"""User-facing errors: `launch.py` prints these as one line and exits with status 2."""


class UserError(Exception):
  """Bad input from the user (paths, data, config values, checkpoints): never a silent default."""
