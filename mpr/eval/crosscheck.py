"""Are two runs' episodes identical? The engine cross-check: an evaluation replayed on TextWorld.

  python launch.py --config experiments/configs/agent_eval.py --workdir A
  python launch.py --config experiments/configs/agent_eval.py:engine=textworld --workdir B
  python -m mpr.eval.crosscheck A/eval B/eval

Compares every `episodes_*.jsonl` the two stage folders share, episode by episode (matched by game
and seed) and step by step: action, observation, admissible commands, the action distribution the
agent computed, and the outcome. Prints a JSON report (files, episodes, steps compared, the first
difference per file) and exits 1 if anything differs or an episode is missing on one side.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Optional, Sequence

from mpr import io
from mpr.errors import UserError, one_line_errors
from mpr.records import Episode

_STEP_FIELDS = ("action", "observation", "admissible", "action_probs")


def _episodes(path: str) -> dict[tuple, Episode]:
  return {(e.game, e.seed): e for e in map(Episode.from_json, io.read_jsonl(path))}


def _first_difference(a: Episode, b: Episode) -> Optional[dict]:
  for field in ("won", "failure"):
    if getattr(a, field) != getattr(b, field):
      return {"step": None, "field": field, "a": getattr(a, field), "b": getattr(b, field)}
  if len(a.steps) != len(b.steps):
    return {"step": None, "field": "steps", "a": len(a.steps), "b": len(b.steps)}
  for sa, sb in zip(a.steps, b.steps):
    for field in _STEP_FIELDS:
      if getattr(sa, field) != getattr(sb, field):
        return {"step": sa.t, "field": field, "a": getattr(sa, field), "b": getattr(sb, field)}
  return None


def compare(dir_a: str, dir_b: str) -> dict:
  names = sorted({os.path.basename(p) for p in glob.glob(os.path.join(dir_a, "episodes_*.jsonl"))} &
                 {os.path.basename(p) for p in glob.glob(os.path.join(dir_b, "episodes_*.jsonl"))})
  if not names:
    raise UserError(f"{dir_a} and {dir_b} share no episodes_*.jsonl files to compare")
  files = {}
  for name in names:
    a, b = _episodes(os.path.join(dir_a, name)), _episodes(os.path.join(dir_b, name))
    only = sorted(set(a) ^ set(b))
    diffs = {f"{g} seed {s}": d for (g, s) in sorted(set(a) & set(b))
             if (d := _first_difference(a[g, s], b[g, s])) is not None}
    files[name] = {"episodes": len(set(a) & set(b)), "steps": sum(len(a[k].steps) for k in set(a) & set(b)),
                   "identical": len(set(a) & set(b)) - len(diffs), "missing_on_one_side": [list(k) for k in only],
                   "first_difference": next(iter(diffs.items()), None), "different": len(diffs)}
  return {"a": dir_a, "b": dir_b, "files": files,
          "identical": all(f["different"] == 0 and not f["missing_on_one_side"] for f in files.values())}


@one_line_errors("crosscheck")
def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("a", help="a stage folder holding episodes_*.jsonl (e.g. WORKDIR/eval)")
  p.add_argument("b")
  args = p.parse_args(argv)
  report = compare(args.a, args.b)
  print(json.dumps(report, indent=1, default=str))
  return 0 if report["identical"] else 1


if __name__ == "__main__":
  sys.exit(main())
