"""The cost model: per-tier prices of calls and tokens, fitted or read, and what they charge a routed run."""
import json

import numpy as np
import pytest

from mpr.errors import UserError
from mpr.eval import cost
from mpr.records import Episode, Step

KINDS = ("prefill_calls", "score_calls", "decode_calls", "prefill", "score", "decode")
PRICES = {"hi": dict(zip(KINDS, (2.0, 3.0, 0.0, 0.05, 0.02, 0.0))),
          "lo": dict(zip(KINDS, (0.5, 1.0, 0.0, 0.01, 0.005, 0.0)))}


def _ms(tier, work):
  return sum(PRICES[tier][k] * n for k, n in work.items())


def _episode(work_per_step, router_ms=0.2, extra_ms=()):
  """Steps doing the given work per tier; model time = their true price (+ extra ms, e.g. a compile)."""
  steps = []
  for t, work in enumerate(work_per_step):
    ms = sum(_ms(tier, w) for tier, w in work.items()) + router_ms + (extra_ms[t] if t < len(extra_ms) else 0)
    steps.append(Step(t=t, observation="", admissible=["look"], action="look", tokens=work,
                      model_seconds=ms / 1e3, router_seconds=router_ms / 1e3))
  return Episode("g", "pick_and_place_simple", 0, "", steps, won=True)


def _runs(seed=0):
  """High only, low only (one fused pass a step) and routed (the low tier embeds in a prefill-only pass,
  then scores, or the high tier catches up and scores); each run's first step compiles."""
  rng = np.random.default_rng(seed)
  n = lambda lo, hi: int(rng.integers(lo, hi))
  alone = lambda tier: [_episode([{tier: {"score_calls": 1, "prefill": n(10, 200), "score": n(50, 300)}}
                                  for _ in range(30)], extra_ms=(5000.0,))]
  routed = []
  for _ in range(40):
    step = {"lo": {"prefill_calls": 1, "prefill": n(10, 80)}}
    if rng.random() < 0.3:
      step["hi"] = {"score_calls": 1, "prefill": n(20, 300), "score": n(50, 300)}
    else:
      step["lo"].update(score_calls=1, score=n(50, 300))
    routed.append(step)
  return [alone("hi"), alone("lo"), [_episode(routed, extra_ms=(5000.0,))]]


def test_fit_recovers_each_kind_of_pass_and_token_and_ignores_compiles():
  runs = _runs()
  costs = cost.fit(runs, ["hi", "lo"])
  for tier, prices in PRICES.items():
    done = {k for run in runs for e in run for s in e.steps for k in s.tokens.get(tier, {})}
    # What never ran is priced 0: decoding, and the high tier's prefill-only passes (it never embeds).
    assert costs["tiers"][tier] == pytest.approx({k: v if k in done else 0.0 for k, v in prices.items()}, abs=1e-6)


def test_a_routed_run_is_charged_both_tiers_where_both_ran():
  costs = cost.fit(_runs(), ["hi", "lo"])
  steps = [{"lo": {"prefill_calls": 1, "score_calls": 1, "prefill": 40, "score": 90}},
           {"lo": {"prefill_calls": 1, "prefill": 40}, "hi": {"score_calls": 1, "prefill": 120, "score": 90}}]
  want = (_ms("lo", steps[0]["lo"]) + _ms("lo", steps[1]["lo"]) + _ms("hi", steps[1]["hi"])) / 2 + 0.2
  assert cost.step_ms(costs, [_episode(steps)]) == pytest.approx(want, abs=1e-6)
  table = {**costs, "router_ms": 0.0}            # a table's router time replaces the measured one
  assert cost.step_ms(table, [_episode(steps)]) == pytest.approx(want - 0.2, abs=1e-6)
  with pytest.raises(UserError, match=r"no prices for tier\(s\) \['mid'\]"):
    cost.step_ms(costs, [Episode("g", "pick_and_place_simple", 0, "", [Step(
        t=0, observation="", admissible=["look"], action="look", tokens={"mid": {"prefill": 1}})], won=False)])


def test_fit_refuses_other_tiers_and_too_few_steps():
  with pytest.raises(UserError, match=r"ran tier\(s\) \['lo'\], not among \['hi'\]"):
    cost.fit([[_episode([{"lo": {"score_calls": 1}}])]], ["hi"])
  with pytest.raises(UserError, match="1 steps cannot price 2 kinds"):
    cost.fit([[_episode([{"hi": {"score_calls": 1, "prefill": 3}}])]], ["hi"])


def test_price_tables_load_and_bad_ones_fail_in_one_line(tmp_path):
  good = tmp_path / "h100.json"
  good.write_text(json.dumps({"tiers": PRICES, "router_ms": 0.1, "source": "H100"}))
  assert cost.load_table(str(good)) == {"tiers": PRICES, "router_ms": 0.1, "source": "H100"}
  bad = {"missing.json": None, "notjson.json": "{", "notiers.json": {"hi": PRICES["hi"]},
         "short.json": {"tiers": {"hi": {"call": 1.0}}},
         "negative.json": {"tiers": {"hi": {**PRICES["hi"], "decode": -1}}},
         "router.json": {"tiers": PRICES, "router_ms": "fast"}}
  for name, content in bad.items():
    if content is not None:
      (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError) as e:
      cost.load_table(str(tmp_path / name))
    assert str(e.value).startswith(f"cost table {tmp_path / name}:") and "\n" not in str(e.value)


def test_a_finished_evaluation_is_repriced_from_its_logs(tmp_path, capsys):
  from mpr import io
  from mpr.stages.route_eval import point_log
  (tmp_path / "points").mkdir()
  high, low, _ = _runs()
  runs = {("high only", None): high, ("low only", None): low,
          ("KL-ST", "q=0.20 K=0.5"): [_episode([{"lo": {"prefill_calls": 1, "prefill": 40},
                                                 "hi": {"score_calls": 1, "prefill": 120, "score": 90}}] * 4)]}
  points = []
  for (method, param), eps in runs.items():
    io.atomic_write_text(point_log(str(tmp_path), method, param),
                         "".join(json.dumps(e.to_json()) + "\n" for e in eps))
    points.append({"method": method, "param": param, "high_ratio": 0.5, "model_ms_per_step": 1.0,
                   "mean_steps": float(np.mean([len(e.steps) for e in eps]))})
  (tmp_path / "results.json").write_text(json.dumps({"points": points}))
  prices = tmp_path / "prices.json"
  prices.write_text(json.dumps({"tiers": PRICES, "router_ms": 0.0, "source": "test"}))
  assert cost.main([str(tmp_path), str(prices)]) == 0
  out = capsys.readouterr().out
  hi_ms = np.mean([_ms("hi", s.tokens["hi"]) for s in runs["high only", None][0].steps])
  mixed_ms = _ms("lo", {"prefill_calls": 1, "prefill": 40}) + _ms("hi", {"score_calls": 1, "prefill": 120, "score": 90})
  want = hi_ms * 30 / (mixed_ms * 4)
  assert f"| KL-ST | q=0.20 K=0.5 | 50.0 | 1.0 | {mixed_ms:.2f} | {want:.2f}× |" in out
  assert cost.main([str(tmp_path / "nowhere"), str(prices)]) == 2
