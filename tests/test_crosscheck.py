"""The engine cross-check: an evaluation replayed on TextWorld gives the FastEnv run's episodes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from mpr.eval import crosscheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = os.path.join(ROOT, "experiments/configs/agent_eval.py")


def _eval(workdir, engine):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                      f"{EVAL}:num_games=2,precisions=bf16,engine={engine}", "--config.env.max_steps=6",
                      "--workdir", str(workdir)], cwd=ROOT, capture_output=True, text=True)
  assert p.returncode == 0, p.stderr[-3000:]
  assert json.load(open(workdir / "eval" / "metrics.json"))["engine"] == engine
  return workdir / "eval"


def test_eval_on_textworld_replays_the_fast_episodes(tmp_path, alfworld_data, capsys):
  fast, real = _eval(tmp_path / "fast", "fast"), _eval(tmp_path / "textworld", "textworld")
  assert crosscheck.main([str(fast), str(real)]) == 0
  report = json.loads(capsys.readouterr().out)
  (name, f), = report["files"].items()
  assert name == "episodes_valid_seen_bf16.jsonl" and f["identical"] == f["episodes"] == 2 and f["steps"] > 2

  # One altered observation is found and named.
  path = real / name
  lines = path.read_text().splitlines()
  ep = json.loads(lines[0])
  ep["steps"][1]["observation"] += " (edited)"
  path.write_text("\n".join([json.dumps(ep), *lines[1:]]) + "\n")
  assert crosscheck.main([str(fast), str(real)]) == 1
  diff = json.loads(capsys.readouterr().out)["files"][name]
  assert diff["different"] == 1 and diff["first_difference"][1]["field"] == "observation"
  assert diff["first_difference"][1]["step"] == 1


def test_nothing_to_compare_is_one_line_exit_2(tmp_path, capsys):
  assert crosscheck.main([str(tmp_path), str(tmp_path)]) == 2
  assert capsys.readouterr().err.count("\n") == 1
