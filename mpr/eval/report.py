"""The paper's tables and Pareto plot from evaluated operating points.

A point is one evaluated routing configuration:

  {"method": "KL-ST", "param": "q=0.20 K=0.412", "share": 0.2, "success": 0.888, "ci": [0.83, 0.93],
   "n": 134, "high_ratio": 0.267, "speedup": 1.21, "speedup_est": 1.35, "per_task": {"pick_...": 0.9},
   "outcomes": {"<game id>": true, ...}}

`share` is the pre-set operating point: the share of validation steps its threshold sends high (fixed
before evaluation; None for the single-tier baselines); `high_ratio` is the share of steps it actually
ran on the high tier. A random point also names the point it is matched to (`matches`: "method param").
`outcomes` (per game: won) makes the paired comparisons; `speedup` is measured wall clock against
high-only (router and embedding overhead included), `speedup_est` the cost model's estimate from the
calls and tokens each tier ran (mpr.eval.cost); either may be None where it was not measured. Rates are fractions in the data and
percentages in the tables.

  paths = write_report(points, outdir, shares=(0.1, 0.2, 0.3, 0.5), caption=plot_caption(...))
  # results.json, table1.md, table2.md, pareto.png and pareto.svg (success vs high-precision calls)
"""
from __future__ import annotations

import argparse
import itertools
import numbers
import os
import sys
from typing import Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mpr.errors import UserError, one_line_errors
from mpr.eval import paired
from mpr import io
from mpr.io import atomic_open, atomic_write_json, atomic_write_text

# Row order of the tables; methods not listed follow in order of first appearance.
METHOD_ORDER = ("high only", "low only", "random", "entropy", "margin", "first-k", "oracle",
                "KL-ST", "GRPO only", "KL-ST + GRPO")
BASELINES = ("high only", "low only", "random")
_KEYS = ("method", "param", "success", "ci", "n", "high_ratio", "speedup", "speedup_est", "per_task")
_X_AXES = {"high_ratio": False, "speedup": True, "speedup_est": True}   # axis -> higher is better
_TOL = 1e-9      # ratios computed as counts/steps should compare equal to the round targets
RANDOM_TOLERANCE = 0.02   # a random point stands in for a method's point only this close in high ratio


# --- validation ----------------------------------------------------------------------------------

def _is_rate(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and 0.0 <= x <= 1.0


def _check_point(i: int, p) -> None:
  if not isinstance(p, dict):
    raise UserError(f"point {i}: expected a dict, got {type(p).__name__}")
  missing = [k for k in _KEYS if k not in p]
  if missing:
    raise UserError(f"point {i} ({p.get('method', '?')}): missing keys {missing}")
  where = f"point {i} ({p['method']} {p['param']})"
  if not isinstance(p["method"], str) or not p["method"]:
    raise UserError(f"point {i}: method must be a non-empty string, got {p['method']!r}")
  if p["param"] is not None and not isinstance(p["param"], str):
    raise UserError(f"{where}: param must be a string or None")
  for k in ("success", "high_ratio"):
    if not _is_rate(p[k]):
      raise UserError(f"{where}: {k} must be in [0, 1], got {p[k]!r}")
  ci = p["ci"]
  if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(map(_is_rate, ci))
          and ci[0] - _TOL <= p["success"] <= ci[1] + _TOL):
    raise UserError(f"{where}: ci must be [lo, hi] in [0, 1] around success, got {ci!r}")
  if not isinstance(p["n"], numbers.Integral) or p["n"] < 1:
    raise UserError(f"{where}: n must be a positive integer, got {p['n']!r}")
  for k in ("speedup", "speedup_est"):
    if p[k] is not None and not (isinstance(p[k], numbers.Real) and p[k] > 0):
      raise UserError(f"{where}: {k} must be a positive number or None, got {p[k]!r}")
  if not isinstance(p["per_task"], dict) or not all(map(_is_rate, p["per_task"].values())):
    raise UserError(f"{where}: per_task must map task types to success rates in [0, 1]")
  if p.get("share") is not None and not _is_rate(p["share"]):
    raise UserError(f"{where}: share must be in [0, 1] or None, got {p['share']!r}")
  out = p.get("outcomes")
  if out is not None and not (isinstance(out, dict) and len(out) == p["n"]
                              and abs(sum(map(bool, out.values())) / p["n"] - p["success"]) < 1e-6):
    raise UserError(f"{where}: outcomes must map each of its n={p['n']} games to won, matching success")


def _check(points: Sequence[dict]) -> list[dict]:
  points = list(points)
  if not points:
    raise UserError("report: no operating points given")
  for i, p in enumerate(points):
    _check_point(i, p)
  return points


def _by_method(points: Sequence[dict]) -> dict[str, list[dict]]:
  """Points grouped by method, in table order."""
  groups: dict[str, list[dict]] = {}
  for p in points:
    groups.setdefault(p["method"], []).append(p)
  rank = {m: i for i, m in enumerate(METHOD_ORDER)}
  return dict(sorted(groups.items(), key=lambda kv: rank.get(kv[0], len(rank))))


# --- selections ----------------------------------------------------------------------------------

def _dominates(a: dict, b: dict, x: str) -> bool:
  sign = 1 if _X_AXES[x] else -1
  ge = a["success"] >= b["success"] and sign * a[x] >= sign * b[x]
  return ge and (a["success"] > b["success"] or sign * a[x] > sign * b[x])


def pareto_front(points: Sequence[dict], x: str = "high_ratio", per_method: bool = True) -> list[dict]:
  """Points no other point beats on both success and `x` (lower high_ratio, higher speed-up).

  per_method: compare within each method (its own curve); otherwise across all methods. Points
  without a value for `x` (an unmeasured speed-up) take no part. Sorted by method, then x.
  """
  if x not in _X_AXES:
    raise UserError(f"pareto_front: x must be one of {sorted(_X_AXES)}, got {x!r}")
  points = [p for p in _check(points) if p[x] is not None]
  groups = _by_method(points).values() if per_method else [points]
  return [p for g in groups for p in sorted(g, key=lambda q: q[x])
          if not any(_dominates(q, p, x) for q in g)]


def _label(p: dict) -> str:
  return f"{p['method']} {p['param']}" if p["param"] else p["method"]


def _paired(a: dict, b: dict) -> Optional[dict]:
  """a vs b game by game, or None where either point lacks per-game outcomes."""
  if a.get("outcomes") is None or b.get("outcomes") is None:
    return None
  return paired.compare(a["outcomes"], b["outcomes"])


def _named(p: dict, randoms: Sequence[dict]) -> Optional[dict]:
  """The random point played for p (its `matches` names p), or None."""
  return next((r for r in randoms if r.get("matches") == _label(p)), None)


def _matched(p: dict, randoms: Sequence[dict]) -> Optional[dict]:
  """The random point played for p, else the nearest in high ratio, else None."""
  named = _named(p, randoms)
  if named is not None:
    return named
  return min(randoms, key=lambda r: abs(r["high_ratio"] - p["high_ratio"])) if randoms else None


def _too_far(p: dict, q: dict, tolerance: float) -> Optional[str]:
  """Why q cannot stand in for random routing at p's high ratio, or None when it can."""
  if abs(q["high_ratio"] - p["high_ratio"]) <= tolerance + _TOL:
    return None
  return (f"random ran {_pct(q['high_ratio'])}% high against {_pct(p['high_ratio'])}%: more than "
          f"{100 * tolerance:.0f} points apart, not a matched baseline")


def matched_random_gap(points: Sequence[dict], method: str, baseline: str = "random",
                       tolerance: float = RANDOM_TOLERANCE) -> list[dict]:
  """For each point of `method`, its success minus that of the random point played at its high ratio.

  The baseline point is the one whose `matches` names it (else the nearest in high ratio). A pair more
  than `tolerance` apart in high ratio is refused: its gap is None and `refused` says why (a random
  point at another ratio is another method). With per-game outcomes on both, `paired` holds the
  paired comparison (mpr.eval.paired.compare).
  """
  points = _check(points)
  mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["high_ratio"])
  ref = [p for p in points if p["method"] == baseline]
  if not mine or not ref:
    raise UserError(f"matched_random_gap: need points of both {method!r} and {baseline!r}")
  out = []
  for p in mine:
    q = _matched(p, ref)
    refused = _too_far(p, q, tolerance)
    out.append({"param": p["param"], "share": p.get("share"), "high_ratio": p["high_ratio"], "success": p["success"],
                "baseline_param": q["param"], "baseline_high_ratio": q["high_ratio"],
                "baseline_success": q["success"], "refused": refused,
                "gap": None if refused else p["success"] - q["success"],
                "paired": None if refused else _paired(p, q)})
  return out


def paired_vs(points: Sequence[dict], reference: str = "high only") -> dict[str, dict]:
  """Every other point's paired comparison with the single `reference` point, by its label."""
  points = _check(points)
  refs = [p for p in points if p["method"] == reference]
  if len(refs) != 1:
    raise UserError(f"paired_vs: need exactly one {reference!r} point, got {len(refs)}")
  return {_label(p): _paired(p, refs[0]) for p in points if p is not refs[0]}


# --- tables --------------------------------------------------------------------------------------

def _pct(x: float) -> str:
  return f"{100 * x:.1f}"


def _speed(x: Optional[float]) -> str:
  return "—" if x is None else f"{x:.2f}×"


def _delta(d: Optional[dict], fallback: float) -> str:
  """A difference in points: paired with its 95% interval and McNemar p where outcomes exist."""
  if d is None:
    return f"{round(100 * fallback, 1) + 0.0:+.1f}"      # + 0.0: a rounded -0.0 prints as 0.0
  lo, hi = d["ci"]
  return (f"{round(100 * d['delta'], 1) + 0.0:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
          f"p={d['p_mcnemar']:.2g}")


def _at_share(points: Sequence[dict], method: str, share: float) -> Optional[dict]:
  return next((p for p in points if p["method"] == method and p.get("share") is not None
               and abs(p["share"] - share) <= _TOL), None)


def table1(points: Sequence[dict], shares: Sequence[float] = (0.1, 0.2, 0.3, 0.5), reference: str = "high only") -> str:
  """Markdown: every method at each pre-set share of high-precision calls, compared game by game.

  Rows: the single-tier baselines, then per share each method that has a point there (random rows are
  the matched baselines, shown as the Δ vs random of the point they match). Δ columns are paired over
  the same games: the difference in points [95% bootstrap interval] and the exact McNemar p.
  """
  points = _check(points)
  groups = _by_method(points)
  if len(groups.get(reference, ())) != 1:
    raise UserError(f"table1: need exactly one {reference!r} point as the reference, "
                    f"got {len(groups.get(reference, ()))}")
  ref = groups[reference][0]
  randoms = groups.get("random", [])
  lines = [f"**Table 1.** Success at pre-set shares of high-precision calls (each threshold fixed on validation "
           f"to send that share of validation steps high). Δ in points vs {reference} and vs random routing at the "
           f"point's realised share, paired over the same games: [95% bootstrap interval], exact McNemar p. "
           f"Speed-up per episode vs high only: measured model time / the cost model's estimate from the calls "
           f"and tokens each tier ran (mpr.eval.cost).", "",
           "| method | pre-set share | operating point | high calls % | success % (95% CI) | Δ vs " + reference
           + " | Δ vs random | speed-up measured / estimated |",
           "|---|---:|---|---:|---:|---|---|---:|"]

  def row(p: dict, share: str) -> str:
    lo, hi = p["ci"]
    vs_ref = "—" if p is ref else _delta(_paired(p, ref), p["success"] - ref["success"])
    match = _named(p, randoms)
    if match is None:
      vs_rand = "—"
    elif _too_far(p, match, RANDOM_TOLERANCE):
      vs_rand = f"refused: random ran {_pct(match['high_ratio'])}%"
    else:
      vs_rand = _delta(_paired(p, match), p["success"] - match["success"])
    return (f"| {p['method']} | {share} | {p['param'] or '—'} | {_pct(p['high_ratio'])} | "
            f"{_pct(p['success'])} ({_pct(lo)}–{_pct(hi)}) | {vs_ref} | {vs_rand} | "
            f"{_speed(p['speedup'])} / {_speed(p['speedup_est'])} |")

  for method in ("high only", "low only"):
    lines += [row(p, "—") for p in groups.get(method, [])]
  for q in shares:
    for method in groups:
      p = _at_share(points, method, q)
      if p is not None and method not in BASELINES:
        lines.append(row(p, f"{_pct(q)}%"))
  return "\n".join(lines) + "\n"


ABLATION_ORDER = (("KL-ST + GRPO", "KL-ST"), ("KL-ST", "GRPO only"))   # the paper's claim: each ≥ the next


def table2(points: Sequence[dict], methods: Sequence[str] = ("KL-ST", "GRPO only", "KL-ST + GRPO"),
           shares: Sequence[float] = (0.1, 0.2, 0.3, 0.5), order=ABLATION_ORDER) -> str:
  """Markdown ablation: each router's success at each pre-set share (the realised share in brackets),
  then for each pair in `order` the first's success minus the second's, paired over the same games."""
  points = _check(points)
  lines = ["**Table 2.** Ablation: success % at each pre-set share of high-precision calls "
           "(realised share in brackets); below, differences in points paired over the same games "
           "[95% bootstrap interval], exact McNemar p.", "",
           "| method | " + " | ".join(f"{_pct(q)}% high" for q in shares) + " |",
           "|---|" + "---:|" * len(shares)]
  for method in methods:
    cells = []
    for q in shares:
      p = _at_share(points, method, q)
      cells.append("—" if p is None else f"{_pct(p['success'])} [{_pct(p['high_ratio'])}%]")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  for a, b in order:
    pairs = [(_at_share(points, a, q), _at_share(points, b, q)) for q in shares]
    if all(pa is None or pb is None for pa, pb in pairs):
      continue
    cells = ["—" if pa is None or pb is None else _delta(_paired(pa, pb), pa["success"] - pb["success"])
             for pa, pb in pairs]
    lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def table3(points: Sequence[dict], seed_points: Sequence[dict], reference: str = "high only") -> str:
  """Markdown: the spread over router training seeds. Per router and pre-set share, each seed's success,
  realised share and paired Δ vs `reference`, then their mean ± sample standard deviation.

  `points` hold the reference seed's points (and the reference); `seed_points` the other seeds' (each
  with its `seed`) at the shares they were played."""
  points, seed_points = _check(points), _check(seed_points)
  ref = next(p for p in points if p["method"] == reference)
  lines = ["**Table 3.** Spread over router training seeds: success % and Δ in points vs " + reference
           + " (paired) per seed, then mean ± sd over seeds.", "",
           "| method | pre-set share | seed | high calls % | success % | Δ vs " + reference + " |",
           "|---|---:|---:|---:|---:|---|"]
  keys = sorted({(p["method"], p["share"]) for p in seed_points},
                key=lambda k: (METHOD_ORDER.index(k[0]) if k[0] in METHOD_ORDER else len(METHOD_ORDER), k[1]))
  for method, q in keys:
    rows = [p for p in [_at_share(points, method, q)] if p is not None]
    rows += sorted((p for p in seed_points if (p["method"], p["share"]) == (method, q)), key=lambda p: p["seed"])
    for p in rows:
      lines.append(f"| {method} | {_pct(q)}% | {p.get('seed', '—')} | {_pct(p['high_ratio'])} | "
                   f"{_pct(p['success'])} | {_delta(_paired(p, ref), p['success'] - ref['success'])} |")
    succ = np.array([p["success"] for p in rows])
    high = np.array([p["high_ratio"] for p in rows])
    sd = lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0
    lines.append(f"| {method} | {_pct(q)}% | **mean ± sd ({len(rows)})** | {_pct(high.mean())} ± {_pct(sd(high))} | "
                 f"**{_pct(succ.mean())} ± {_pct(sd(succ))}** | {100 * (succ.mean() - ref['success']):+.1f} |")
  return "\n".join(lines) + "\n"


MAIN_ROUTER = "KL-ST + GRPO"


def head_to_head(points: Sequence[dict], method: str = MAIN_ROUTER,
                 shares: Sequence[float] = (0.1, 0.2, 0.3, 0.5)) -> dict[str, dict[str, Optional[dict]]]:
  """`method` against every other method at each pre-set share, by rival then share ("0.2").

  Each entry: {"delta": method's success − the rival's, "paired": mpr.eval.paired.compare where both have
  per-game outcomes (else None)}; None where either has no point at that share. High only and low only
  are the same point at every share; random is the point played at `method`'s own realised share, and
  one more than RANDOM_TOLERANCE away is {"refused": why}.
  """
  points = _check(points)
  groups = _by_method(points)
  if method not in groups:
    raise UserError(f"head_to_head: no points of {method!r}")
  out: dict[str, dict[str, Optional[dict]]] = {}
  for rival in groups:
    if rival == method:
      continue
    row = out[rival] = {}
    for q in shares:
      p, r = _at_share(points, method, q), None
      if p is not None:
        if rival == "random":
          r = _named(p, groups["random"])
        elif rival in BASELINES:
          r = groups[rival][0]
        else:
          r = _at_share(points, rival, q)
      why = r is not None and rival == "random" and _too_far(p, r, RANDOM_TOLERANCE)
      if r is None:
        row[f"{q:g}"] = None
      elif why:
        row[f"{q:g}"] = {"refused": why}
      else:
        row[f"{q:g}"] = {"delta": p["success"] - r["success"], "paired": _paired(p, r)}
  return out


def table4(points: Sequence[dict], method: str = MAIN_ROUTER, shares: Sequence[float] = (0.1, 0.2, 0.3, 0.5)) -> str:
  """Markdown: `method` against every other method at each pre-set share (head_to_head), one row per rival."""
  h2h = head_to_head(points, method, shares)
  lines = [f"**Table 4.** {method} against every other method at the same pre-set share of high-precision calls: "
           f"its success minus the other's, in points, paired over the same games [95% bootstrap interval] and "
           f"the exact McNemar p; positive means {method} won more games. High only and low only are the "
           f"same point at every share; random is played at {method}'s realised share.", "",
           "| vs | " + " | ".join(f"{_pct(q)}% high" for q in shares) + " |",
           "|---|" + "---|" * len(shares)]
  for rival, row in h2h.items():
    cells = []
    for q in shares:
      c = row[f"{q:g}"]
      cells.append("—" if c is None else f"refused ({c['refused'].split(':')[0]})" if "refused" in c
                   else _delta(c["paired"], c["delta"]))
    lines.append(f"| {rival} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --- plot ----------------------------------------------------------------------------------------

REFERENCES = ("high only", "low only")   # one tier throughout: horizontal lines, not points at 0% / 100%
# Okabe-Ito colours (then Paul Tol's), distinguishable with colour-vision deficiency, none shared between
# families; line styles and marker fills tell the families apart in greyscale too (routers: solid, filled;
# heuristics: dotted, open; random: dashed grey; oracle: black star).
_ROUTER_COLORS = ("#0072B2", "#D55E00", "#009E73", "#882255", "#332288", "#999933")
_ROUTER_MARKERS = ("o", "D", "s", "P", "X", "h")
_FIXED_STYLES = {
    "high only": {"color": "black", "linestyle": (0, (5, 2))},
    "low only": {"color": "0.45", "linestyle": (0, (2, 2))},
    "random": {"color": "0.55", "linestyle": (0, (4, 2)), "marker": "o", "markerfacecolor": "0.55"},
    "entropy": {"color": "#E69F00", "linestyle": ":", "marker": "^", "markerfacecolor": "white"},
    "margin": {"color": "#56B4E9", "linestyle": ":", "marker": "v", "markerfacecolor": "white"},
    "first-k": {"color": "#CC79A7", "linestyle": ":", "marker": "s", "markerfacecolor": "white"},
    "oracle": {"color": "black", "linestyle": "-.", "marker": "*", "markersize": 6},
}
_RC = {"font.size": 7, "axes.labelsize": 7, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5, "legend.fontsize": 6.5,
       "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
       "axes.spines.top": False, "axes.spines.right": False,
       # Text stays text in the SVG (searchable, editable for the paper); a fixed salt keeps its ids, and so
       # a re-render of the same data, byte-identical.
       "svg.fonttype": "none", "svg.hashsalt": "mpr"}
# Per format: PNG at a resolution that survives print; SVG without a date, again for identical re-renders.
_FORMATS = {".png": {"format": "png", "dpi": 300}, ".svg": {"format": "svg", "metadata": {"Date": None}}}


def plot_caption(model: str, high: str, low: str, split: str, episodes: int, seed: int, engine: str) -> str:
  """The figure's subtitle: what was run, in the words a paper caption would use."""
  return f"{model} · high {high} / low {low} · {split} · {episodes} episodes/point · seed {seed} · {engine} engine"


def pareto_series(points: Sequence[dict]) -> list[dict]:
  """What pareto_plot draws, one entry per method in table order.

  Each has the method, its kind ("reference" for REFERENCES: a horizontal line per point; "curve":
  markers joined by a line) and, per point sorted by high-call share, x = high-precision calls %,
  y = success % and the 95% interval lo..hi in %.
  """
  series = []
  for method, group in _by_method(_check(points)).items():
    group = sorted(group, key=lambda p: (p["high_ratio"], p["success"]))
    series.append({"method": method, "kind": "reference" if method in REFERENCES else "curve",
                   "x": [100 * p["high_ratio"] for p in group], "y": [100 * p["success"] for p in group],
                   "lo": [100 * p["ci"][0] for p in group], "hi": [100 * p["ci"][1] for p in group]})
  return series


def _wrap_caption(caption: str, width: int = 70) -> str:
  """Lines of at most `width` characters, broken only between ' · ' fields (a column-wide figure)."""
  lines: list[str] = []
  for field in caption.split(" · "):
    if lines and len(lines[-1]) + 3 + len(field) <= width:
      lines[-1] += " · " + field
    else:
      lines.append(field)
  return "\n".join(lines)


def pareto_plot(points: Sequence[dict], *paths: str, caption: Optional[str] = None) -> None:
  """Success vs high-precision calls, written to each of `paths` (.png, .svg), atomically.

  High only and low only are dashed horizontal lines over a light band of their 95% interval; every
  other method's points are joined in order of high-call share, each with a thin 95% error bar.
  `caption` (see plot_caption) becomes the subtitle. Axes fit the data; the legend sits outside it.
  """
  series = pareto_series(points)
  bad = [p for p in paths if os.path.splitext(p)[1].lower() not in _FORMATS]
  if bad:
    raise UserError(f"pareto_plot: can write {sorted(_FORMATS)} files, not {bad}")
  routers = iter(zip(itertools.cycle(_ROUTER_COLORS), itertools.cycle(_ROUTER_MARKERS)))
  with matplotlib.rc_context(_RC):
    # A bare Figure on the Agg canvas: no pyplot, so no global backend or figure state. Sized for one
    # paper column, so the font sizes in _RC are the printed ones.
    fig = Figure(figsize=(3.5, 2.7), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    handles = []
    for s in series:
      if s["method"] in _FIXED_STYLES:
        style = dict(_FIXED_STYLES[s["method"]])
      else:
        color, marker = next(routers)
        style = {"color": color, "linestyle": "-", "marker": marker}
      if s["kind"] == "reference":
        for y, lo, hi in zip(s["y"], s["lo"], s["hi"]):
          band = ax.axhspan(lo, hi, color=style["color"], alpha=0.06, linewidth=0, zorder=0)
          line = ax.axhline(y, linewidth=1.0, zorder=1, **style)
        # The legend entry shows the band behind the line, so the shading explains itself.
        handles.append(((band, line), s["method"]))
        continue
      err = [[y - lo for y, lo in zip(s["y"], s["lo"])], [hi - y for y, hi in zip(s["y"], s["hi"])]]
      bars = ax.errorbar(s["x"], s["y"], yerr=err, linewidth=1.0, markersize=style.pop("markersize", 3.5),
                         markeredgewidth=0.8, elinewidth=0.5, capsize=0, ecolor=style["color"], zorder=3, **style)
      handles.append((bars, s["method"]))
    ax.margins(x=0.06, y=0.03)
    ax.set_xlabel("high-precision calls (% of steps)")
    ax.set_ylabel("success (%)")
    ax.legend(*zip(*handles), loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False,
              handlelength=2.2)
    if caption:
      fig.suptitle(_wrap_caption(caption), fontsize=6.5)
    for path in paths:
      with atomic_open(path, "wb") as f:
        fig.savefig(f, **_FORMATS[os.path.splitext(path)[1].lower()])


CURVES = (("reward", "reward", 1.0), ("success", "success (%)", 100.0), ("high_ratio", "high calls (%)", 100.0),
          ("kl_ref", "KL to reference", 1.0))


def learning_curves(runs: dict[str, Sequence[dict]], *paths: str, title: Optional[str] = None) -> None:
  """GRPO's learning curves, one line per run (name -> its iteration rows): reward, success, high share
  and KL to the reference router per iteration, in a 2 × 2 grid, written to each of `paths` atomically."""
  bad = [p for p in paths if os.path.splitext(p)[1].lower() not in _FORMATS]
  if bad:
    raise UserError(f"learning_curves: can write {sorted(_FORMATS)} files, not {bad}")
  with matplotlib.rc_context(_RC):
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    # More runs than colours (a λ sweep and its seeds): each pass through the colours takes the next line
    # style and marker, so no two runs look alike.
    styles = itertools.product((("-", "o"), ("--", "s"), (":", "^")), _ROUTER_COLORS)
    for (name, rows), ((linestyle, marker), color) in zip(runs.items(), itertools.cycle(styles)):
      for ax, (key, label, scale) in zip(axes, CURVES):
        ax.plot([r["iteration"] for r in rows], [scale * r[key] for r in rows], color=color, linewidth=1.0,
                linestyle=linestyle, marker=marker, markersize=2, label=name)
        ax.set_ylabel(label)
    for ax in axes[2:]:
      ax.set_xlabel("iteration")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    if title:
      fig.suptitle(title, fontsize=7)
    for path in paths:
      with atomic_open(path, "wb") as f:
        fig.savefig(f, **_FORMATS[os.path.splitext(path)[1].lower()])


# --- everything ----------------------------------------------------------------------------------

def write_report(points: Sequence[dict], outdir: str, shares: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
                 caption: Optional[str] = None, setting: Optional[dict] = None,
                 seed_points: Optional[Sequence[dict]] = None) -> dict[str, str]:
  """Writes results.json, table1.md, table2.md, pareto.png and pareto.svg under outdir (and table3.md
  for `seed_points`, the other router seeds' points; table4.md where MAIN_ROUTER has points); returns
  their paths.

  caption: the figure's subtitle (plot_caption: model, tiers, split, episodes, seed, engine); none if
  not given. setting: what the points were played with (e.g. the engine), stored in results.json.
  results.json holds every point, the Pareto fronts, each method's gaps to its matched random points,
  every point's paired comparison with high only and MAIN_ROUTER's head to head with every method.
  """
  points = _check(points)
  groups = _by_method(points)
  targets = {r.get("matches") for r in groups.get("random", [])}
  matched = [m for m, g in groups.items() if m not in BASELINES and any(_label(p) in targets for p in g)]
  results = {
      **({"setting": setting} if setting else {}),
      "points": points,
      "pareto_high_ratio": pareto_front(points, "high_ratio", per_method=False),
      "pareto_speedup": pareto_front(points, "speedup", per_method=False),
      "vs_random": {m: matched_random_gap(points, m) for m in matched},
      "vs_high_only": paired_vs(points) if "high only" in groups else {},
      **({"seed_points": list(seed_points)} if seed_points else {}),
      **({"head_to_head": {"method": MAIN_ROUTER, "vs": head_to_head(points, shares=shares)}}
         if MAIN_ROUTER in groups else {}),
  }
  names = (("results.json", "table1.md", "table2.md", "pareto.png", "pareto.svg")
           + (("table3.md",) if seed_points else ()) + (("table4.md",) if MAIN_ROUTER in groups else ()))
  paths = {name: os.path.join(outdir, name) for name in names}
  if seed_points:
    atomic_write_text(paths["table3.md"], table3(points, seed_points))
  atomic_write_json(paths["results.json"], results)
  atomic_write_text(paths["table1.md"], table1(points, shares=shares))
  atomic_write_text(paths["table2.md"], table2(points, shares=shares))
  if MAIN_ROUTER in groups:
    atomic_write_text(paths["table4.md"], table4(points, shares=shares))
  pareto_plot(points, paths["pareto.png"], paths["pareto.svg"], caption=caption)
  return paths


def read_results(outdir: str) -> dict:
  """The results.json a report wrote in `outdir` (write_report), checked to hold a list of points."""
  path = os.path.join(outdir, "results.json")
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: not a report folder")
  results = io.read_json_object(path)
  if not isinstance(results.get("points"), list):
    raise UserError(f"{path} holds no list of points: not a report's results.json")
  return results


def rerender(outdir: str, caption: Optional[str] = None) -> dict[str, str]:
  """Writes a report again from the points in its results.json (e.g. one made before a table was added),
  at the pre-set shares its points were played at; the plot keeps the caption results.json records
  unless `caption` is given."""
  results = read_results(outdir)
  points, setting = results["points"], results.get("setting")
  shares = sorted({p["share"] for p in _check(points) if p.get("share") is not None})
  if not shares:
    raise UserError(f"{os.path.join(outdir, 'results.json')}: no point was played at a pre-set share (a report from before pre-set shares)")
  caption = caption or (setting or {}).get("caption")
  if caption:
    setting = {**(setting or {}), "caption": caption}
  return write_report(points, outdir, shares=shares, caption=caption, setting=setting,
                      seed_points=results.get("seed_points"))


@one_line_errors("report")
def main(argv: Optional[Sequence[str]] = None) -> int:
  ap = argparse.ArgumentParser(description="Re-renders a report (tables, results.json, Pareto plot) from the "
                                           "points in its results.json.")
  ap.add_argument("outdir", nargs="+", help="a folder holding a report's results.json (e.g. WORKDIR/route_eval)")
  ap.add_argument("--caption", help="the plot's subtitle, where results.json records none")
  args = ap.parse_args(argv)
  for outdir in args.outdir:
    print("\n".join(sorted(rerender(outdir, args.caption).values())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
