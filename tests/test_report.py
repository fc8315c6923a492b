"""Report tables and Pareto plot from operating points: selection rules, formatting, bad input."""
import json
import os
import xml.etree.ElementTree as ET

import pytest

from mpr.errors import UserError
from mpr.eval import report


def _pt(method, param, success, ratio, speedup=1.0, speedup_est=None, share=None, matches=None):
  out = {"method": method, "param": param, "share": share, "success": success,
         "ci": [max(0.0, success - 0.05), min(1.0, success + 0.05)], "n": 134, "high_ratio": ratio,
         "speedup": speedup, "speedup_est": speedup if speedup_est is None else speedup_est,
         "per_task": {"pick_and_place_simple": success}}
  return {**out, "matches": matches} if matches else out


def _points():
  return [
      _pt("high only", None, 0.90, 1.0, 1.0),
      _pt("low only", None, 0.80, 0.0, 1.6),
      _pt("random", "p=0.08", 0.82, 0.09, 1.5, share=0.1, matches="KL-ST K=0.6"),
      _pt("random", "p=0.18", 0.84, 0.17, 1.4, share=0.2, matches="KL-ST K=0.5"),
      _pt("random", "p=0.28", 0.85, 0.29, 1.3, share=0.3, matches="KL-ST K=0.4"),
      _pt("random", "p=0.45", 0.86, 0.46, 1.2, share=0.5, matches="KL-ST K=0.2"),
      _pt("KL-ST", "K=0.6", 0.86, 0.08, 1.45, 1.5, share=0.1),
      _pt("KL-ST", "K=0.5", 0.89, 0.18, 1.30, 1.4, share=0.2),
      _pt("KL-ST", "K=0.4", 0.88, 0.28, 1.35, share=0.3),     # dominated on ratio by K=0.5, not on speed
      _pt("KL-ST", "K=0.2", 0.91, 0.45, None, share=0.5),     # speed-up not measured
      _pt("GRPO only", "K=0.5", 0.87, 0.35, 1.1, share=0.3),
      _pt("GRPO only", "K=0.3", 0.90, 0.50, 1.05, share=0.5),
      _pt("KL-ST + GRPO", "K=0.5", 0.87, 0.1 + 1e-12, 1.5, share=0.1),
      _pt("KL-ST + GRPO", "K=0.4", 0.905, 0.25, 1.25, share=0.2),
  ]


def _key(ps):
  return [(p["method"], p["param"]) for p in ps]


def test_pareto_front_per_method_and_global():
  front = report.pareto_front(_points())
  kl = [p["param"] for p in front if p["method"] == "KL-ST"]
  assert kl == ["K=0.6", "K=0.5", "K=0.2"]                   # K=0.4 is worse and dearer than K=0.5
  by_speed = [p["param"] for p in report.pareto_front(_points(), "speedup") if p["method"] == "KL-ST"]
  assert by_speed == ["K=0.5", "K=0.4", "K=0.6"]             # sorted by x; K=0.2 has no speed-up
  overall = report.pareto_front(_points(), "high_ratio", per_method=False)
  assert _key(overall) == [("low only", None), ("KL-ST", "K=0.6"), ("KL-ST + GRPO", "K=0.5"),
                           ("KL-ST", "K=0.5"), ("KL-ST + GRPO", "K=0.4"), ("KL-ST", "K=0.2")]
  with pytest.raises(UserError):
    report.pareto_front(_points(), x="success")


def _rows(md):
  return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
          for r in md.splitlines() if r.startswith("| ") and not r.startswith("| method")}


def test_table1_lists_every_method_at_each_pre_set_share():
  rows = [[c.strip() for c in r.split("|")[1:-1]] for r in report.table1(_points()).splitlines()
          if r.startswith("| ") and not r.startswith("| method")]
  assert [(r[0], r[1]) for r in rows] == [
      ("high only", "—"), ("low only", "—"), ("KL-ST", "10.0%"), ("KL-ST + GRPO", "10.0%"),
      ("KL-ST", "20.0%"), ("KL-ST + GRPO", "20.0%"), ("KL-ST", "30.0%"), ("GRPO only", "30.0%"),
      ("KL-ST", "50.0%"), ("GRPO only", "50.0%")]                     # random rows: only as "Δ vs random"
  high, low = rows[0], rows[1]
  assert high[2:] == ["—", "100.0", "90.0 (85.0–95.0)", "—", "—", "1.00× / 1.00×"]
  assert low[5] == "-10.0"                                          # no outcomes: the plain difference
  kl20 = rows[4]
  assert kl20[2:7] == ["K=0.5", "18.0", "89.0 (84.0–94.0)", "-1.0", "+5.0"]
  assert rows[3][6] == "—"                                          # KL-ST + GRPO has no matched random here
  with pytest.raises(UserError):
    report.table1([p for p in _points() if p["method"] != "high only"])


def _with_outcomes(p, wins):
  """p with per-game outcomes: the first `wins` of 20 games won (success and n to match)."""
  out = {f"g{i:02d}": i < wins for i in range(20)}
  return {**p, "n": 20, "success": wins / 20, "ci": [0.0, 1.0], "outcomes": out}


def test_table1_and_results_pair_games_where_outcomes_exist(tmp_path):
  pts = [_with_outcomes(_pt("high only", None, 0.9, 1.0), 18),
         _with_outcomes(_pt("low only", None, 0.5, 0.0), 10),
         _with_outcomes(_pt("random", "p=0.2", 0.6, 0.21, share=0.2, matches="KL-ST K=0.5"), 12),
         _with_outcomes(_pt("KL-ST", "K=0.5", 0.85, 0.2, share=0.2), 17)]
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
          for r in report.table1(pts, shares=(0.2,)).splitlines() if r.startswith("| ") and "method" not in r}
  # KL-ST loses exactly game 17 vs high only: -5 points; McNemar on 1 discordant game: p = 1.
  assert rows["KL-ST"][4].startswith("-5.0 [") and rows["KL-ST"][4].endswith("p=1")
  # vs random: games 12..16 won only by KL-ST: +25 points, p = 2 / 2^5.
  assert rows["KL-ST"][5].startswith("+25.0 [+") and rows["KL-ST"][5].endswith("p=0.062")
  off = [dict(p, high_ratio=0.3) if p["method"] == "random" else p for p in pts]   # random ran 10 points off
  assert "| refused: random ran 30.0% |" in report.table1(off, shares=(0.2,))
  paths = report.write_report(pts, str(tmp_path), shares=(0.2,))
  res = json.load(open(paths["results.json"]))
  assert res["vs_high_only"]["low only"]["only_b"] == 8 and res["vs_high_only"]["low only"]["only_a"] == 0
  assert res["vs_random"]["KL-ST"][0]["paired"]["only_a"] == 5


def test_table2_reports_each_router_at_each_share():
  rows = _rows(report.table2(_points()))
  assert rows["KL-ST"] == ["86.0 [8.0%]", "89.0 [18.0%]", "88.0 [28.0%]", "91.0 [45.0%]"]
  assert rows["GRPO only"] == ["—", "—", "87.0 [35.0%]", "90.0 [50.0%]"]
  assert rows["KL-ST + GRPO"] == ["87.0 [10.0%]", "90.5 [25.0%]", "—", "—"]
  assert _rows(report.table2(_points(), methods=("oracle",), shares=(0.5,)))["oracle"] == ["—"]
  # Paired differences along the claimed order (plain differences here: no per-game outcomes).
  assert rows["KL-ST + GRPO − KL-ST"] == ["+1.0", "+1.5", "—", "—"]
  assert rows["KL-ST − GRPO only"] == ["—", "—", "+1.0", "+1.0"]
  pts = [_with_outcomes(_pt("KL-ST", "K=0.5", 0.85, 0.2, share=0.2), 17),
         _with_outcomes(_pt("KL-ST + GRPO", "K=0.4", 0.9, 0.2, share=0.2), 18)]
  paired = _rows(report.table2(pts, shares=(0.2,)))
  assert paired["KL-ST + GRPO − KL-ST"][0].startswith("+5.0 [") and "KL-ST − GRPO only" not in paired


def test_matched_random_gap_uses_the_named_point_and_refuses_a_mismatch():
  gaps = report.matched_random_gap(_points(), "KL-ST")
  assert [g["param"] for g in gaps] == ["K=0.6", "K=0.5", "K=0.4", "K=0.2"]
  assert [g["baseline_param"] for g in gaps] == ["p=0.08", "p=0.18", "p=0.28", "p=0.45"]
  assert [g["gap"] for g in gaps] == pytest.approx([0.04, 0.05, 0.03, 0.05])
  assert all(g["paired"] is None and g["refused"] is None for g in gaps)   # no outcomes: no pairing
  far = report.matched_random_gap(_points(), "GRPO only")           # nearest random points are 4-6 points off
  assert [g["gap"] for g in far] == [None, None] and "more than 2 points apart" in far[0]["refused"]
  with pytest.raises(UserError):
    report.matched_random_gap(_points(), "oracle")


def test_pareto_series_sorted_by_high_ratio():
  points = _points()[::-1]                                    # input order must not matter
  series = {s["method"]: s for s in report.pareto_series(points)}
  assert list(series) == ["high only", "low only", "random", "KL-ST", "GRPO only", "KL-ST + GRPO"]
  assert {m for m, s in series.items() if s["kind"] == "reference"} == {"high only", "low only"}
  assert series["high only"]["y"] == pytest.approx([90.0]) and series["low only"]["lo"] == pytest.approx([75.0])
  kl = series["KL-ST"]
  assert kl["kind"] == "curve" and kl["x"] == pytest.approx([8, 18, 28, 45])
  assert kl["y"] == pytest.approx([86, 89, 88, 91])             # joined in x order, not input or K order
  assert kl["lo"] == pytest.approx([81, 84, 83, 86]) and kl["hi"] == pytest.approx([91, 94, 93, 96])
  for s in series.values():
    assert s["x"] == sorted(s["x"]) and all(lo <= y <= hi for lo, y, hi in zip(s["lo"], s["y"], s["hi"]))


def test_plot_caption():
  cap = report.plot_caption("tiny policy", "bf16", "int2", "valid_seen", 140, 0, "fast")
  assert cap == "tiny policy · high bf16 / low int2 · valid_seen · 140 episodes/point · seed 0 · fast engine"


def _svg_text(path):
  return [e.text for e in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}text")]


def test_plot_and_report_files(tmp_path):
  cap = report.plot_caption("tiny policy", "bf16", "int2", "valid_seen", 134, 0, "textworld")
  paths = report.write_report(_points(), str(tmp_path / "out"), caption=cap, setting={"engine": "textworld"})
  assert sorted(os.listdir(tmp_path / "out")) == ["pareto.png", "pareto.svg", "results.json", "table1.md",
                                                  "table2.md", "table4.md"]
  assert paths["pareto.svg"] == str(tmp_path / "out" / "pareto.svg")
  with open(paths["pareto.png"], "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
  text = _svg_text(paths["pareto.svg"])                       # parses: valid XML
  # The subtitle, as text (searchable, editable), broken between fields to fit one paper column.
  assert text[text.index("seed 0 · textworld engine") - 1] == "tiny policy · high bf16 / low int2 · valid_seen · 134 episodes/point"
  assert {"high only", "low only", "KL-ST + GRPO", "high-precision calls (% of steps)"} <= set(text)
  with open(paths["results.json"]) as f:
    results = json.load(f)
  assert len(results["points"]) == len(_points()) and results["setting"] == {"engine": "textworld"}
  assert results["vs_random"]["KL-ST"][1]["gap"] == pytest.approx(0.05)
  assert set(results["vs_random"]) == {"KL-ST"}                     # the only method with matched random points
  with open(paths["table1.md"]) as f:
    assert "| KL-ST | 20.0% | K=0.5 |" in f.read()


def test_plot_rerenders_identically_and_caption_is_optional(tmp_path):
  a, b, c = (str(tmp_path / f"{n}.svg") for n in "abc")
  report.pareto_plot(_points(), a, caption="a subtitle")
  report.pareto_plot(_points(), b, caption="a subtitle")
  with open(a, "rb") as fa, open(b, "rb") as fb:
    assert fa.read() == fb.read()                             # no date or random ids: re-renders diff clean
  report.pareto_plot(_points(), c)
  assert "a subtitle" in _svg_text(a) and "a subtitle" not in _svg_text(c) and "random" in _svg_text(c)
  with pytest.raises(UserError):
    report.pareto_plot(_points(), str(tmp_path / "d.png"), str(tmp_path / "d.jpg"))
  assert sorted(os.listdir(tmp_path)) == ["a.svg", "b.svg", "c.svg"]   # a bad name writes nothing


@pytest.mark.parametrize("bad", [
    [],
    [dict(_pt("KL-ST", "K=0.5", 0.9, 0.2), success=1.2)],
    [dict(_pt("KL-ST", "K=0.5", 0.9, 0.2), high_ratio=-0.1)],
    [{k: v for k, v in _pt("KL-ST", "K=0.5", 0.9, 0.2).items() if k != "ci"}],
    [dict(_pt("KL-ST", "K=0.5", 0.9, 0.2), ci=[0.95, 0.99])],
    [dict(_pt("KL-ST", "K=0.5", 0.9, 0.2), speedup=0.0)],
])
def test_bad_points_are_user_errors(bad, tmp_path):
  def plot(points):
    report.pareto_plot(points, str(tmp_path / "x.png"), str(tmp_path / "x.svg"))

  for fn in (report.pareto_front, report.table2, report.pareto_series, plot):
    with pytest.raises(UserError):
      fn(bad)
  assert not os.listdir(tmp_path)


def test_table3_spreads_each_router_over_its_seeds(tmp_path):
  games = [f"g{i}" for i in range(10)]
  def with_outcomes(p, wins, seed=None):
    p = {**p, "n": 10, "success": wins / 10, "ci": [0.0, 1.0], "outcomes": {g: i < wins for i, g in enumerate(games)}}
    return p if seed is None else {**p, "seed": seed}
  points = [with_outcomes(_pt("high only", None, 0.9, 1.0), 9),
            with_outcomes(_pt("KL-ST", "K=0.5", 0.8, 0.21, share=0.2), 8, seed=0)]
  seeds = [with_outcomes(_pt("KL-ST", "K=0.4 seed=1", 0.6, 0.19, share=0.2), 6, seed=1),
           with_outcomes(_pt("KL-ST", "K=0.6 seed=2", 0.7, 0.20, share=0.2), 7, seed=2)]
  rows = [r for r in report.table3(points, seeds).splitlines() if r.startswith("| KL-ST |")]
  assert [r.split("|")[3].strip() for r in rows] == ["0", "1", "2", "**mean ± sd (3)**"]
  assert rows[1].split("|")[5].strip() == "60.0" and rows[1].split("|")[6].strip().startswith("-30.0 [")
  # success 80 / 60 / 70: mean 70.0, sample sd 10.0; high 21 / 19 / 20: mean 20.0 ± 1.0; Δ vs high −20.0
  assert [c.strip() for c in rows[3].split("|")[4:7]] == ["20.0 ± 1.0", "**70.0 ± 10.0**", "-20.0"]
  paths = report.write_report(points, str(tmp_path), shares=(0.2,), seed_points=seeds)
  assert os.path.exists(paths["table3.md"])
  assert [p["seed"] for p in json.load(open(paths["results.json"]))["seed_points"]] == [1, 2]


def test_learning_curves_plot_every_run(tmp_path):
  rows = lambda r0: [{"iteration": i + 1, "reward": r0 + 0.1 * i, "success": 0.5, "high_ratio": 0.3, "kl_ref": 0.01 * i}
                     for i in range(3)]
  png, svg = str(tmp_path / "c.png"), str(tmp_path / "c.svg")
  report.learning_curves({"lam=0.1_seed=0": rows(0.2), "lam=0.5_seed=0": rows(0.1)}, png, svg, title="GRPO")
  assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  text = open(svg).read()
  assert "lam=0.1_seed=0" in text and "lam=0.5_seed=0" in text and "KL to reference" in text
  with pytest.raises(UserError, match="can write"):
    report.learning_curves({"a": rows(0.0)}, str(tmp_path / "c.pdf"))


def test_head_to_head_pairs_the_main_router_with_every_method_at_its_share(tmp_path):
  pts = [_with_outcomes(_pt("high only", None, 0.9, 1.0), 18),
         _with_outcomes(_pt("low only", None, 0.5, 0.0), 10),
         _with_outcomes(_pt("random", "p=0.2", 0.6, 0.21, share=0.2, matches="KL-ST + GRPO K=0.5"), 12),
         _with_outcomes(_pt("random", "p=0.35", 0.6, 0.35, share=0.3, matches="KL-ST + GRPO K=0.4"), 12),
         _with_outcomes(_pt("entropy", "H≥1", 0.7, 0.2, share=0.2), 14),
         _with_outcomes(_pt("KL-ST", "K=0.6", 0.8, 0.2, share=0.2), 16),
         _with_outcomes(_pt("KL-ST + GRPO", "K=0.5", 0.85, 0.2, share=0.2), 17),
         _with_outcomes(_pt("KL-ST + GRPO", "K=0.4", 0.9, 0.3, share=0.3), 18)]
  h2h = report.head_to_head(pts, shares=(0.2, 0.3))
  assert list(h2h) == ["high only", "low only", "random", "entropy", "KL-ST"]
  assert h2h["high only"]["0.2"]["delta"] == pytest.approx(-0.05)          # the one point, at every share
  assert h2h["high only"]["0.3"]["paired"]["only_a"] == 0 and h2h["low only"]["0.3"]["paired"]["only_a"] == 8
  assert h2h["random"]["0.2"]["paired"]["only_a"] == 5                      # the point matched to K=0.5
  assert "more than 2 points apart" in h2h["random"]["0.3"]["refused"]     # random ran 35% against 30%
  assert h2h["entropy"]["0.2"]["delta"] == pytest.approx(0.15) and h2h["entropy"]["0.3"] is None
  rows = _rows(report.table4(pts, shares=(0.2, 0.3)))
  assert rows["KL-ST"][0].startswith("+5.0 [") and rows["KL-ST"][1] == "—"
  assert rows["random"][1] == "refused (random ran 35.0% high against 30.0%)"
  assert rows["high only"][1] == "+0.0 [+0.0, +0.0] p=1"
  with pytest.raises(UserError, match="no points of 'GRPO only'"):
    report.head_to_head(pts, method="GRPO only")
  paths = report.write_report(pts, str(tmp_path), shares=(0.2, 0.3))
  res = json.load(open(paths["results.json"]))
  assert res["head_to_head"]["method"] == "KL-ST + GRPO"
  assert res["head_to_head"]["vs"]["entropy"]["0.2"]["paired"]["only_a"] == 3
  assert "table4.md" not in report.write_report(pts[:6], str(tmp_path / "no_router"), shares=(0.2,))


def test_rerender_rewrites_a_report_from_its_points(tmp_path):
  pts = [_with_outcomes(_pt("high only", None, 0.9, 1.0), 18),
         _with_outcomes(_pt("KL-ST + GRPO", "K=0.5", 0.85, 0.2, share=0.2), 17)]
  report.write_report(pts, str(tmp_path), shares=(0.2,), setting={"engine": "fast", "caption": "tiny · seed 0"})
  os.remove(tmp_path / "table4.md")
  open(tmp_path / "table1.md", "w").write("stale")
  assert report.main([str(tmp_path)]) == 0
  assert "| KL-ST + GRPO | 20.0% | K=0.5 |" in open(tmp_path / "table1.md").read()
  assert (tmp_path / "table4.md").exists() and "tiny · seed 0" in _svg_text(tmp_path / "pareto.svg")
  assert json.load(open(tmp_path / "results.json"))["setting"]["engine"] == "fast"
  assert report.main([str(tmp_path / "nowhere")]) == 2
  open(tmp_path / "results.json", "w").write("{trunc")
  with pytest.raises(UserError, match="invalid JSON"):
    report.rerender(str(tmp_path))
