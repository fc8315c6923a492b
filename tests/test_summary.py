import pytest

from mpr.eval import summary
from mpr.records import UNATTRIBUTED, Episode, Step


def _ep(task, won, n):
  steps = [Step(t=i, observation="o", admissible=["look"], action="look") for i in range(n)]
  return Episode(game=f"g{n}", task_type=task, seed=0, goal="g", steps=steps, won=won,
                 failure=None if won else "step_cap")


def test_wilson_interval_matches_reference_values():
  # Reference values from the closed form (Wilson 1927), z = 1.96.
  assert summary.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
  assert summary.wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
  assert summary.wilson_interval(140, 140) == pytest.approx((0.9733, 1.0), abs=1e-4)


def test_summarize_per_task_and_failures():
  eps = [_ep("pick_and_place_simple", True, 4), _ep("pick_and_place_simple", False, 50),
         _ep("look_at_obj_in_light", True, 2)]
  s = summary.summarize(eps)
  assert s["overall"]["n"] == 3
  assert s["overall"]["success"] == pytest.approx(2 / 3)
  assert s["overall"]["mean_steps"] == pytest.approx(56 / 3)
  assert s["overall"]["mean_steps_won"] == pytest.approx(3)
  assert s["overall"]["failures"] == {"step_cap": 1}
  assert set(s["per_task"]) == {"pick_and_place_simple", "look_at_obj_in_light"}
  assert s["per_task"]["pick_and_place_simple"]["success"] == 0.5
  table = summary.markdown_table(s, "t")
  assert "| pick_and_place_simple | 2 | 50.0 |" in table


def test_episode_json_round_trip():
  e = _ep("pick_two_obj_and_place", True, 3)
  assert Episode.from_json(e.to_json()) == e


def test_episode_logs_written_before_typed_step_fields_still_load():
  old = {"game": "g", "task_type": "pick_and_place_simple", "seed": 0, "goal": "", "won": True, "failure": None,
         "extra": {"reset_seconds": 0.5},
         "steps": [{"t": 0, "observation": "o", "admissible": ["look"], "action": "look", "env_seconds": 0.0,
                    "precision": "int4", "p_high": 0.3, "tokens_prefilled": 40, "tokens_decoded": 0,
                    "model_seconds": 0.01, "extra": {"tokens_scored": 9, "router_seconds": 0.001, "z": "AAA=",
                                                     "action_probs": [1.0], "other": 1}}]}
  e = Episode.from_json(old)
  s = e.steps[0]
  assert e.reset_seconds == 0.5 and e.extra == {}
  # Old totals did not say which variant did the work: kept, but unattributed (the cost model refuses them).
  assert s.tokens == {UNATTRIBUTED: {"prefill": 40, "score": 9, "decode": 0}} and s.work("score") == 9
  assert (s.router_seconds, s.z, s.action_probs, s.extra) == (0.001, "AAA=", [1.0], {"other": 1})
  assert Episode.from_json(e.to_json()) == e
