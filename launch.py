"""Runs an experiment: the stages its config lists, each into WORKDIR/<stage>/.

  python launch.py --config experiments/configs/expert_eval.py[:arg] --workdir DIR [--config.a.b=value ...]

Multi-host (mpr/hosts.py): the same command on every host with one shared --workdir, plus
--distributed (TPU pods, Slurm: the cluster is detected) or --coordinator_address HOST:PORT
--num_processes N --process_id I.

Bad input (unknown config keys, bad values, missing data or checkpoints) prints one line and exits 2.
"""
from __future__ import annotations

import errno
import logging
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from mpr import compile_cache, config_util, hosts
from mpr.errors import UserError
from mpr.stages import (bc, collect, convert, evaluate, expert_rollouts, oracle, route_eval, router_grpo,
                        router_sl, runner, tokenizer)

# The registry: a stage name in a config maps to exactly one module (no getattr on strings).
STAGES = {
    "bc": bc,
    "collect": collect,
    "convert": convert,
    "eval": evaluate,
    "expert_rollouts": expert_rollouts,
    "oracle": oracle,
    "route_eval": route_eval,
    "router_grpo": router_grpo,
    "router_grpo_scratch": router_grpo.SCRATCH,
    "router_sl": router_sl,
    "tokenizer": tokenizer,
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/configs/*.py)",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder; a re-run resumes what is there")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "join a multi-host run through jax.distributed "
                                 "(implied by the three flags below)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-host: HOST:PORT of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index", lower_bound=0)


def _stop(line: str, code: int) -> None:
  """Prints `line` and exits now. Everything a run keeps is already on disk (atomic files, fsynced
  logs); skipping the interpreter's shutdown keeps orbax's background threads from printing "Event
  loop is closed" tracebacks after the line (they can still print before it)."""
  print(line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _fail(msg: str) -> None:
  _stop(f"launch.py: error: {msg}", 2)


def _unknown_key(e: Exception) -> str:
  """One line from config_flags' "no such field": ml_collections' KeyError, maybe wrapped in an
  AttributeError, whose message is the quoted key and, for a near miss, a 'Did you mean' line."""
  while e.args and isinstance(e.args[0], Exception):
    e = e.args[0]
  key, *hint = str(e.args[0] if e.args else e).splitlines()
  return f"unknown config key {key}" + "".join(f" ({h.strip()})" for h in hint[:1])


def _config_arg(argv: list[str]) -> str:
  """The --config value as given (config_flags knows it only once parsing succeeded)."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "?"


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.stages  # config_flags defers load errors to the first access; surface them here
      if "env" in _CONFIG.value:  # checked here, before a stage records the config in its folder
        config_util.check_env(_CONFIG.value.env)
  except SystemExit:
    # absl's --help/--helpfull print the usage and exit 1 before main; the help asked for was given.
    sys.exit(0)
  except OSError as e:
    _fail(f"cannot load --config {flags.FLAGS['config'].config_filename}: {str(e).strip().splitlines()[-1].strip()}")
  except UserError as e:  # raised by a config file's get_config(arg) or check_env
    _fail(str(e))
  except (AttributeError, KeyError) as e:  # config_flags' way of saying "no such field"
    _fail(_unknown_key(e))
  except (flags.Error, ValueError, TypeError) as e:
    _fail(str(e).strip().splitlines()[-1])
  except Exception as e:  # the config file itself failed to run: not Python, a NameError, a bad import
    line = (str(e).strip().splitlines() or [""])[0]
    _fail(f"cannot load --config {_config_arg(argv)}: {type(e).__name__}: {line}")
  if len(rest) > 1:
    _fail(f"unexpected arguments {rest[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    _fail("both --config and --workdir are required")
  return rest


def _quiet_third_parties() -> None:
  """Shows mpr's own INFO lines and everyone's warnings; other libraries' INFO chatter (orbax's
  checkpoint notes, jax's backend probing) comes back with an explicit --verbosity (0 = INFO, 1 = DEBUG).
  Stage logs (log.txt) keep everything."""
  if flags.FLAGS["verbosity"].present:
    return
  logging.getLogger().setLevel(logging.INFO)
  for handler in logging.getLogger().handlers:
    handler.addFilter(lambda r: r.levelno >= logging.WARNING or r.name == "root")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))


def main(argv: list[str]) -> None:
  del argv
  _quiet_third_parties()
  compile_cache.enable()
  config = _CONFIG.value
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    _fail(f"unknown stage(s) {unknown}; known: {sorted(STAGES)}")
  try:
    if _DISTRIBUTED.value or any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
      hosts.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
      hosts.check_shared_workdir(_WORKDIR.value)
    runner.check_workdir(_WORKDIR.value)
    logging.info("jax %s, backend %s, %d device(s)%s", jax.__version__, jax.default_backend(), jax.device_count(),
                 f" on {hosts.count()} hosts" if hosts.count() > 1 else "")
    for name in config.stages:
      runner.run_stage(name, STAGES[name], config, _WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  except OSError as e:
    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
      raise
    # e.g. a stage folder made read-only, an unreadable model
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    _fail(f"{where}: {e.strerror}" if where else str(e))
  except KeyboardInterrupt:
    _stop("launch.py: interrupted; what finished is kept, the same command resumes", 130)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
