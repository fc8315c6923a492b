"""The KL oracle stage: its breakdown of critical steps, and the stage end to end on a few games."""
import json
import os
import subprocess
import sys

import numpy as np

from mpr.records import Episode, Step
from mpr.stages import oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _episode(actions, won, task="pick_heat_then_place_in_recep"):
  steps = [Step(t=t, observation="", admissible=[a], action=a) for t, a in enumerate(actions)]
  return Episode("g", task, 0, "goal", steps, won=won)


def test_breakdown_puts_each_step_in_its_groups():
  won = _episode(["go to fridge 1", "take egg 1 from fridge 1", "heat egg 1 with microwave 1", "move egg 1 to table 1"],
                 won=True)
  lost = _episode(["move egg 1 to table 1"] + ["go to cabinet 1"] * 25, won=False, task="pick_and_place_simple")
  assert [oracle.verb(won, i) for i in range(4)] == ["go", "take", "heat", "move (last, won)"]
  assert oracle.verb(lost, 0) == "move (other)"
  assert [oracle.position(t) for t in (0, 1, 4, 5, 19, 20, 49)] == ["t=0", "t=1", "t=2–4", "t=5–9", "t=10–19",
                                                                   "t≥20", "t≥20"]
  # 30 steps, d_t rising along them, the heat step and the won move far above: the top 10% (3 steps)
  # is those two and the lost episode's last step.
  d = np.linspace(0.0, 0.1, 30).astype(np.float32)
  d[2], d[3] = 3.0, 2.0
  out = oracle.breakdown([won, lost], d, shares=(0.1,))
  assert out["action"]["heat"] == {"steps": 1, "d_mean": 3.0, "top10_rate": 1.0, "top10_share": 1 / 3}
  assert out["action"]["move (last, won)"]["top10_rate"] == 1.0
  assert out["action"]["go"]["steps"] == 26 and out["action"]["go"]["top10_share"] == 1 / 3
  assert list(out["position"]) == ["t=0", "t=1", "t=2–4", "t=5–9", "t=10–19", "t≥20"]
  assert out["position"]["t=2–4"]["top10_share"] == 2 / 3 and out["position"]["t≥20"]["top10_share"] == 1 / 3
  assert out["task type"]["pick_heat_then_place_in_recep"]["top10_rate"] == 0.5


def test_oracle_stage_end_to_end(tmp_path, alfworld_data):
  """collect → oracle on two splits: the curve holds high only, low only and one oracle point per share."""
  args = [sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(tmp_path), "--config",
          os.path.join(ROOT, "experiments/configs/oracle_tiny.py")
          + ":train_games=3,val_games=2,num_games=2,splits=valid_train+valid_seen",
          "--config.oracle.shares=(0.1,0.3)", "--config.env.max_steps=8"]
  p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  res = json.load(open(tmp_path / "oracle" / "results.json"))
  assert set(res["splits"]) == {"valid_train", "valid_seen"} and list(res["taus"]) == ["q=0.1", "q=0.3"]
  assert res["taus"]["q=0.1"] >= res["taus"]["q=0.3"]
  for split, r in res["splits"].items():
    points = {(pt["method"], pt["param"]): pt for pt in r["points"]}
    assert set(points) == {("high only", None), ("low only", None), ("oracle", "q=0.1"), ("oracle", "q=0.3")}
    assert points[("high only", None)]["high_ratio"] == 1.0 and points[("low only", None)]["high_ratio"] == 0.0
    assert (tmp_path / "oracle" / f"oracle_{split}.png").read_bytes()[:4] == b"\x89PNG"
  steps = sum(g["steps"] for g in res["breakdown"]["valid_train"]["action"].values())
  assert steps == json.load(open(tmp_path / "collect" / "metrics.json"))["valid_train"]["steps"]
  assert "d_t by action" in (tmp_path / "oracle" / "summary.md").read_text()
