"""Routing in the agent loop: step embeddings, tier probes, the routing rules, and the pipeline stages."""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mpr.agent import agent as agent_lib, models, prompt
from mpr.envs.rollout import EpisodeView
from mpr.errors import UserError
from mpr.models import engine
from mpr.router import labels, routes
from mpr.router.model import init_params, router_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def policy():
  return models.load(models.model_config())


@pytest.fixture(scope="module")
def variants(policy):
  return policy.variants(["f32", "int4"])


def _view(game, t, slot=0, seed=0, adm=("go to fridge 1", "go to cabinet 1", "look")):
  return EpisodeView(index=0, game=game, seed=seed, goal="put a clean apple in fridge", t=t,
                     observation=f"You arrive at cabinet {t}. On the cabinet {t}, you see a mug {t}.",
                     admissible=tuple(adm), expert_action=None, steps=(), slot=slot)


def _log_scores(variant, tok, history_tokens, admissible):
  last, cache = engine.prefill(variant, variant.init_cache(1, 1024), [history_tokens])
  lps = engine.score(variant, cache, last, [0] * len(admissible),
                     [tok.encode(prompt.COMPACT.action.format(action=a)) for a in admissible])
  return np.array([lp.sum() for lp in lps])


def test_embeddings_and_probes_equal_fresh_computations(policy, variants, valid_seen):
  """z_t = the low tier's mean hidden state over the step's new tokens; probes = each tier's scores."""
  tok, game = policy.tok, valid_seen[0]
  route = agent_lib.Route(lambda views, probe: (["f32" if v.t % 3 == 0 else "int4" for v in views], None),
                          embed="int4", probe=("f32", "int4"))
  agent = agent_lib.Agent(tok, prompt.COMPACT, variants, rows=2, budget=200, route=route, record_z=True)
  for t in range(8):                       # the 200-token budget trims on the way
    d = agent([_view(game, t, slot=1)])[0]
    row = agent.rows[1]
    ctx = row.history.tokens()
    _, _, hidden = engine.prefill(variants["int4"], variants["int4"].init_cache(1, 1024), [ctx], return_hidden=True)
    want_z = np.asarray(hidden[0, len(ctx) - row.history.fresh:len(ctx)], np.float32).mean(0)
    np.testing.assert_allclose(agent_lib.decode_z(d.info["z"]), want_z, atol=2e-2, rtol=2e-2)  # z is stored f16
    np.testing.assert_allclose(row.z[-1], want_z, atol=1e-2, rtol=1e-2)     # bf16 activations
    for name in ("f32", "int4"):
      # int4 embeds and scores in one pass on its cache, the reference in two from scratch: with bf16
      # activations the continuations' log-probs (sums over ~5 tokens) round apart by a few 1e-2.
      np.testing.assert_allclose(d.info["probe_logits"][name], _log_scores(variants[name], tok, ctx, _view(game, t).admissible),
                                 atol=5e-3 if name == "f32" else 5e-2)
    assert d.info["precision"] == ("f32" if t % 3 == 0 else "int4")
    acting = d.info["probe_logits"][d.info["precision"]]
    assert d.action == _view(game, t).admissible[int(np.argmax(acting))]   # acted on the probed scores
  assert row.history.version >= 1 and len(row.z) == 8


def test_steps_record_each_tiers_work_for_the_cost_model(policy, variants, valid_seen):
  """The low tier embeds every step; the high tier acts on some and then catches up on what it missed."""
  route = agent_lib.Route(lambda views, probe: (["f32" if v.t % 3 == 2 else "int4" for v in views], None), embed="int4")
  agent = agent_lib.Agent(policy.tok, prompt.COMPACT, variants, rows=1, budget=1024, route=route)
  cached = {"f32": 0, "int4": 0}
  for t in range(7):
    d = agent([_view(valid_seen[0], t)])[0]
    work, length = d.info["tokens"], agent.rows[0].history.length
    assert set(work) == ({"int4", "f32"} if t % 3 == 2 else {"int4"})
    for name, w in work.items():
      cached[name] += w["prefill"]
      assert cached[name] == length                           # caught up on exactly the context it lacked
      assert (w.get("score", 0) > 0) == (name == d.info["precision"]) and "decode" not in w
      # Passes: the embedding's prefill, then scoring when the embedding tier acts; one fused pass otherwise.
      want = ({"prefill_calls": 1, "score_calls": 1} if name == "int4" == d.info["precision"]
              else {"prefill_calls": 1} if name == "int4" else {"score_calls": 1})
      assert {k: v for k, v in w.items() if k.endswith("_calls")} == want
  assert 0 < cached["f32"] < cached["int4"] == length           # f32 last ran at step 5: it lags


def test_route_needs_known_variants_and_score_mode(policy, variants):
  with pytest.raises(UserError, match="needs variant"):
    agent_lib.Agent(policy.tok, prompt.COMPACT, variants, rows=1, budget=200,
                    route=routes.collect_route("f32", "int2", "high", 0))
  with pytest.raises(UserError, match="mode=score"):
    agent_lib.Agent(policy.tok, prompt.COMPACT, variants, rows=1, budget=200, mode="generate",
                    route=routes.entropy_route("f32", "int4", 0.5))


def test_rules_route_as_specified(valid_seen):
  game = valid_seen[0]
  views = [_view(game, t) for t in range(6)]
  probe = agent_lib.Probe(z=[], logits={"hi": [np.array([0.0, -5.0, -5.0])] * 6,
                                        "lo": [np.array([0.0, 0.0, -5.0])] * 3 + [np.array([0.0, -9.0, -9.0])] * 3})
  assert routes.first_k("hi", "lo", 2).choose(views, probe)[0] == ["hi"] * 2 + ["lo"] * 4
  ent = labels.entropy(probe.logits["lo"][0])
  assert routes.entropy_route("hi", "lo", ent - 1e-6).choose(views, probe)[0] == ["hi"] * 3 + ["lo"] * 3
  assert routes.margin_route("hi", "lo", 0.1).choose(views, probe)[0] == ["hi"] * 3 + ["lo"] * 3
  d = labels.divergence(probe.logits["hi"][0], probe.logits["lo"][0])
  # By hand: p_hi = (1, e^-5, e^-5)/Z, p_lo = (1, 1, e^-5)/Z': KL(p_hi‖p_lo) = Σ p_hi log(p_hi/p_lo).
  p_hi = np.exp([0.0, -5.0, -5.0]) / np.exp([0.0, -5.0, -5.0]).sum()
  p_lo = np.exp([0.0, 0.0, -5.0]) / np.exp([0.0, 0.0, -5.0]).sum()
  assert d == pytest.approx(float(np.sum(p_hi * np.log(p_hi / p_lo))), rel=1e-9)
  assert routes.oracle_route("hi", "lo", d).choose(views, probe)[0] == ["hi"] * 3 + ["lo"] * 3
  rand = routes.random_route("hi", "lo", 0.3, seed=1)
  many = [_view(game, t, seed=s) for s in range(50) for t in range(20)]
  picks = rand.choose(many, probe)[0]
  assert picks == rand.choose(many, probe)[0]                  # a pure function of episode and step
  assert 0.25 < np.mean([p == "hi" for p in picks]) < 0.35
  with pytest.raises(UserError):
    routes.random_route("hi", "lo", 1.5, 0)


def test_router_route_thresholds_and_samples(valid_seen):
  cfg = router_config(width=16, heads=2, layers=1, mlp_dim=16, max_len=4)
  params = init_params(cfg, embed_dim=8, seed=0)
  rng = np.random.default_rng(0)
  zs = [rng.normal(size=(t + 1, 8)).astype(np.float32) for t in (0, 3, 6)]
  p = routes.router_p_high(params, cfg, zs)
  views = [_view(valid_seen[0], len(z) - 1) for z in zs]
  probe = agent_lib.Probe(z=zs, logits={})
  names, got = routes.router_route(params, cfg, "hi", "lo", k=float(np.median(p))).choose(views, probe)
  np.testing.assert_allclose(got, p)
  assert names == ["hi" if x >= np.median(p) else "lo" for x in p]
  # One episode alone gets the same p(high) as inside a batch (padding rows never leak in).
  np.testing.assert_allclose(routes.router_p_high(params, cfg, zs[1:2]), p[1:2], atol=1e-6)
  sampled = routes.router_route(params, cfg, "hi", "lo", sample_seed=3)
  assert sampled.choose(views, probe)[0] == sampled.choose(views, probe)[0]


def _pipeline_args(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(workdir),
          "--config", os.path.join(ROOT, "experiments/configs/dmr_tiny.py") + ":runlocal",
          "--config.collect.games=3", "--config.collect.val_games=2", "--config.env.max_steps=6",
          "--config.env.num_slots=4", "--config.router_sl.epochs=2", "--config.router_sl.batch_size=16",
          "--config.router_grpo.iterations=2", "--config.router_grpo.games_per_iter=2",
          "--config.router_grpo.num_games=3",
          "--config.router_grpo.group_size=2", "--config.eval.num_games=3",
          *extra]


# The full run's shape at toy size: two router seeds, a λ sweep, and a generated evaluation split.
SWEEP = ("--config.router_sl.seeds=(0,1)", "--config.router_grpo.seeds=(0,1)", "--config.router_grpo.lams=(0.1,0.5)",
         "--config.eval.generated_split=test_generated", "--config.eval.generated_games=2",
         "--config.eval.seed_shares=(0.2,)")


def test_pipeline_end_to_end_on_a_few_real_games(tmp_path, alfworld_data, run_hosts):
  """collect → KL-ST (two seeds) → GRPO (a λ sweep kept on validation, two seeds; and from scratch) → every
  method on valid_seen + generated test games → Tables 1–3 and the plots, for both splits and each alone;
  resumed after a kill mid-GRPO; and run again as two jax.distributed hosts sharing the workdir."""
  every = "--config.stages=('collect','router_sl','router_grpo','router_grpo_scratch','route_eval')"
  p = subprocess.run(_pipeline_args(tmp_path, every, *SWEEP), cwd=ROOT, capture_output=True, text=True, timeout=1500)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "Table 1" in p.stdout and "| KL-ST + GRPO |" in p.stdout and "Table 3" in p.stdout
  col = json.load(open(tmp_path / "collect" / "metrics.json"))
  assert col["train"]["games"] == 3 and col["train"]["embed_dim"] > 0
  res = json.load(open(tmp_path / "route_eval" / "results.json"))
  methods = {pt["method"] for pt in res["points"]}
  assert methods >= {"high only", "low only", "random", "entropy", "margin", "first-k", "oracle", "KL-ST",
                     "KL-ST + GRPO", "GRPO only"}
  by = {pt["method"]: pt for pt in res["points"] if pt["method"] in ("high only", "low only")}
  assert by["high only"]["high_ratio"] == 1.0 and by["low only"]["high_ratio"] == 0.0
  assert (tmp_path / "route_eval" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  svg = (tmp_path / "route_eval" / "pareto.svg").read_text()   # the caption wraps between its fields
  assert "valid_seen+test_generated" in svg and "5 episodes/point · seed 0 · fast engine" in svg
  # Each split alone has its own tables, with random played at each router point's realised share on that split.
  for i, (split, n) in enumerate((("valid_seen", 3), ("test_generated", 2))):
    alone = json.load(open(tmp_path / "route_eval" / split / "results.json"))
    assert all(len(pt["outcomes"]) == n for pt in alone["points"]) and set(alone["vs_random"]) == set(res["vs_random"])
    for gaps in alone["vs_random"].values():
      for r in gaps:      # random's p per split, in split order: "p=<valid_seen>/<test_generated> (...)"
        assert r["baseline_param"].split()[0][2:].split("/")[i] == f"{r['high_ratio']:.3f}"
  # The second router seed plays at the seed share: Table 3 holds both seeds of KL-ST and KL-ST + GRPO.
  assert {(pt["method"], pt["seed"]) for pt in res["seed_points"]} == {("KL-ST", 1), ("KL-ST + GRPO", 1)}
  assert "| KL-ST + GRPO | 20.0% | **mean ± sd (2)** |" in open(tmp_path / "route_eval" / "table3.md").read()
  # Table 4 pairs KL-ST + GRPO with every method; a re-render from results.json gives the same tables.
  assert "Table 4" in p.stdout and set(res["head_to_head"]["vs"]) >= {"high only", "random", "first-k", "KL-ST"}
  tables = {f: (tmp_path / "route_eval" / f).read_text() for f in ("table1.md", "table2.md", "table3.md", "table4.md")}
  from mpr.eval import report
  assert report.main([str(tmp_path / "route_eval")]) == 0
  assert {f: (tmp_path / "route_eval" / f).read_text() for f in tables} == tables
  grpo = json.load(open(tmp_path / "router_grpo" / "metrics.json"))
  assert [r["iteration"] for r in grpo["iterations"]] == [1, 2]
  # λ kept on validation; the other seed trained at it; both kept routers saved; curves plotted.
  assert grpo["lam"] in (0.1, 0.5) and [r["lam"] for r in grpo["selection"]] == [0.1, 0.5]
  assert set(grpo["runs"]) == {"lam=0.1_decision_center_seed=0", "lam=0.5_decision_center_seed=0", f"lam={grpo['lam']:g}_decision_center_seed=1"}
  assert (tmp_path / "router_grpo" / "seed_1" / "router" / "router.json").exists()
  assert (tmp_path / "router_grpo" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  scratch = json.load(open(tmp_path / "router_grpo_scratch" / "metrics.json"))
  assert scratch["lam"] == grpo["lam"] and list(scratch["runs"]) == [f"lam={grpo['lam']:g}_decision_center_seed=0"]
  # GRPO learns from the decisions its rollouts made: p(high) recomputed from the logged inputs under the
  # router that played iteration 1 (the KL-ST router of its seed) is the p(high) each step recorded.
  from mpr.router import data as router_data, features
  from mpr.router.model import load_router, p_high
  from mpr.records import Episode
  cfg, sl_params, _ = load_router(str(tmp_path / "router_sl" / "router"))
  tiers = json.load(open(tmp_path / "route_eval" / "config.json"))["tiers"]
  run0 = tmp_path / "router_grpo" / "runs" / f"lam={grpo['lam']:g}_decision_center_seed=0"
  eps = [Episode.from_json(json.loads(x)) for x in open(run0 / "rollouts" / "iter_000.jsonl")]
  x = np.concatenate([features.episode_inputs(cfg.inputs, e, tiers["low"]) for e in eps])
  offsets = np.cumsum([0] + [len(e.steps) for e in eps])
  zw, mask = router_data.windows(x, offsets, np.arange(len(x)), cfg.max_len)
  recorded = np.array([s.p_high for e in eps for s in e.steps])
  np.testing.assert_allclose(np.asarray(p_high(sl_params, cfg, zw, mask)), recorded, rtol=1e-5, atol=1e-6)
  # Every method plays at the one pre-set share; each router point has its random point, matched.
  assert {pt["share"] for pt in res["points"] if pt["method"] not in ("high only", "low only")} == {0.2}
  assert set(res["vs_random"]) == {"KL-ST", "KL-ST + GRPO", "GRPO only"}
  assert all(len(pt["outcomes"]) == 5 for pt in res["points"])
  assert set(res["vs_high_only"]) == {f"{pt['method']} {pt['param']}" if pt["param"] else pt["method"]
                                      for pt in res["points"] if pt["method"] != "high only"}
  # The cost model prices both tiers from the single-tier points, and re-prices the logged points.
  assert set(res["setting"]["cost_model"]["tiers"]) == {tiers["high"], tiers["low"]}
  assert by["high only"]["speedup_est"] == 1.0 and all(pt["model_ms_per_step_est"] > 0 for pt in res["points"])
  prices = tmp_path / "prices.json"
  one_ms_a_pass = {"prefill_calls": 1.0, "score_calls": 1.0, "decode_calls": 1.0, "prefill": 0.0, "score": 0.0,
                   "decode": 0.0}
  prices.write_text(json.dumps({"tiers": {t: one_ms_a_pass for t in (tiers["high"], tiers["low"])}, "router_ms": 0.0}))
  p = subprocess.run([sys.executable, "-m", "mpr.eval.cost", str(tmp_path / "route_eval"), str(prices)],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| high only | — | 100.0 |" in p.stdout and "| 1.00 | 1.00× |" in p.stdout   # one pass a step
  # route_eval with only the KL-ST router: the same games, its points and their random baselines.
  solo = tmp_path / "solo"
  for stage in ("collect", "router_sl"):
    shutil.copytree(tmp_path / stage, solo / stage)
  p = subprocess.run(_pipeline_args(solo, "--config.stages=('route_eval',)", "--config.eval.num_games=2", *SWEEP),
                     cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  solo_res = json.load(open(solo / "route_eval" / "results.json"))
  assert {pt["method"] for pt in solo_res["points"]} & {"KL-ST + GRPO", "GRPO only"} == set()
  assert list(solo_res["vs_random"]) == ["KL-ST"]

  # Resume after a kill mid-GRPO: drop the seed-1 run's iteration 2 checkpoint and half its episodes, run again.
  _, want, _ = load_router(str(tmp_path / "router_grpo" / "seed_1" / "router"))
  sdir = tmp_path / "router_grpo"
  for name in ("metrics.json", "summary.md"):
    os.remove(sdir / name)
  shutil.rmtree(sdir / "router")
  shutil.rmtree(sdir / "seed_1")
  run1 = sdir / "runs" / f"lam={grpo['lam']:g}_decision_center_seed=1"
  shutil.rmtree(_latest_checkpoint(run1))
  log = run1 / "rollouts" / "iter_001.jsonl"
  routed = lambda text: sorted((r["game"], r["seed"], [(s["precision"], s["action"]) for s in r["steps"]])
                               for r in map(json.loads, text.splitlines()))
  before = routed(log.read_text())
  lines = log.read_text().splitlines(keepends=True)
  log.write_text("".join(lines[:len(lines) // 2]) + lines[len(lines) // 2][:40])   # and a torn line
  p = subprocess.run(_pipeline_args(tmp_path, "--config.stages=('router_grpo',)", *SWEEP), cwd=ROOT,
                     capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  assert routed(log.read_text()) == before            # the same routing decisions and actions
  assert json.load(open(sdir / "metrics.json"))["lam"] == grpo["lam"]     # the selection is replayed from its logs
  # The partly logged wave is replayed whole, in the same batches: the same z, the same router.
  _, got = load_router(str(sdir / "seed_1" / "router"))[:2]
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # τ outside the collected KL range: one line, exit 2 (in a fresh workdir over the same data).
  other = tmp_path / "tau"
  shutil.copytree(tmp_path / "collect", other / "collect")
  _exit_2(_pipeline_args(other, "--config.stages=('router_sl',)", "--config.router_sl.tau=50.0", *SWEEP),
          "outside the KL data range")

  # Two hosts: each plays its share of every stage's episodes into its own log, all train on the merged
  # logs. The episodes are the one-host run's; logs and checkpoints that one host owns are written once.
  two = tmp_path / "two_hosts"
  procs = run_hosts(_pipeline_args(two, *SWEEP), 2, timeout=1500)
  for p in procs:
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| KL-ST + GRPO |" in p.stdout
  played = lambda path: sorted((r["game"], r["seed"], r["won"], [s["action"] for s in r["steps"]])
                               for r in map(json.loads, open(path).read().splitlines()))
  shares = [played(two / "collect" / f"episodes_train.host{i}.jsonl") for i in range(2)]
  assert shares[0] and shares[1] and not {e[0] for e in shares[0]} & {e[0] for e in shares[1]}
  assert sorted(shares[0] + shares[1]) == played(tmp_path / "collect" / "episodes_train.jsonl")
  two_run = two / "router_grpo" / "runs" / f"lam={grpo['lam']:g}_decision_center_seed=0"
  assert [json.loads(x)["iteration"] for x in open(two_run / "iterations.jsonl")] == [1, 2]
  runs = json.load(open(two / "collect" / "provenance.json"))["runs"]
  assert len(runs) == 1 and [h["processes"] for h in runs[0]["hosts"]] == [2, 2]   # every host's code
  assert [json.loads(x)["step"] for x in open(two_run / "tb" / "metrics.jsonl")] == [1, 2]
  assert _latest_checkpoint(two_run).is_dir() and (two / "router_grpo" / "router" / "router.json").exists()
  assert json.load(open(two / "router_grpo" / "metrics.json"))["lam"] == grpo["lam"]
  fixed = lambda root: {(pt["method"], pt["success"], pt["high_ratio"])
                        for pt in json.load(open(root / "route_eval" / "results.json"))["points"]
                        if pt["method"] in ("high only", "low only", "first-k")}
  assert fixed(two) == fixed(tmp_path)


def _latest_checkpoint(run_dir):
  """The newest orbax checkpoint folder of a training run (mpr.train.loop keeps one)."""
  return max((p for p in (run_dir / "ckpt").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _exit_2(args, needle):
  p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert p.returncode == 2 and needle in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]


@pytest.mark.parametrize("stage, override, needle", [
    ("collect", "--config.tiers.low=int9", "int9"),
    ("router_sl", "--config.router_sl.quantile=0.5", "steps_train.npz"),        # no collect stage ran
    ("router_grpo", "--config.router_grpo.group_size=1", "group_size"),
    ("router_grpo", "--config.router_grpo.lams=(0.1,0.1)", "router_grpo.lams must be distinct"),
    ("router_grpo", "--config.router_grpo.seeds=(0,1)", "have no KL-ST router to start from"),
    ("router_grpo", "--config.router_grpo.lams=(0.1,0.1000001)", "name the same run folder"),
    ("router_grpo", "--config.router_grpo.loss_means=('episode','mean')", "loss_means must be among"),
    ("router_grpo", "--config.router_grpo.advantages=('center','max')", "advantages must be among"),
    ("router_sl", "--config.router_sl.seeds=(1,1)", "router_sl.seeds must be distinct"),
    ("route_eval", "--config.router_sl.seeds=(0,1) --config.eval.seed_shares=(0.4,)", "must be among eval.shares"),
    ("route_eval", "--config.eval.generated_split=valid_seen", "would be played twice"),
    ("route_eval", "--config.eval.shares=(0.2,)", "no trained router"),
    ("route_eval", "--config.eval.shares=(0.2,0.2)", "distinct shares"),
    ("collect", "--config.collect.val_split=train", "both 'train'"),
])
def test_pipeline_bad_inputs_are_one_line_exit_2(tmp_path, alfworld_data, stage, override, needle):
  if stage == "route_eval":
    (tmp_path / "collect").mkdir()
    from mpr.router import data
    data.save(str(tmp_path / "collect" / "steps_train.npz"), data.StepTable(
        z=np.zeros((2, 4), np.float32), d=np.array([0.0, 1.0], np.float32), offsets=np.array([0, 2]),
        low_entropy=np.zeros(2, np.float32), low_margin=np.ones(2, np.float32), games=["g"], won=np.array([True])))
  _exit_2(_pipeline_args(tmp_path, f"--config.stages=('{stage}',)", *override.split()), needle)


def test_operating_points_send_the_preset_share_of_validation_steps_high():
  from mpr.router import data
  from mpr.stages.route_eval import high_steps, thresholds
  x = np.arange(10, dtype=np.float32)
  d = x.copy()
  d[0] = np.nan                                   # a step whose d is unknown
  val = data.StepTable(z=np.zeros((10, 4), np.float32), d=d, offsets=np.array([0, 4, 10]), low_entropy=x / 10,
                       low_margin=x / 10, games=["a", "b"], won=np.array([True, False]))
  th = thresholds(val, {"KL-ST": x / 20}, (0.2, 0.45))
  assert set(th) == {"KL-ST", "entropy", "margin", "oracle", "first-k"}
  assert th["oracle"][0.2] == pytest.approx(7.4)  # the 0.8 quantile of the known d (1..9)
  # first-k: episodes of 4 and 6 steps; k=1 covers 2/10 of the steps, k=2 4/10 (nearest 0.45).
  assert th["first-k"] == {0.2: 1, 0.45: 2}
  for q in (0.2, 0.45):
    high = high_steps(val, {"KL-ST": x / 20}, th, q)
    # Each quantile rule's side of its threshold holds the share q of the validation steps (up to one step).
    for name in ("KL-ST", "entropy", "margin", "oracle"):
      assert abs(high[name].mean() - q) <= 0.1, name
  # Thresholds on the data's own values: routers, entropy and the oracle go high at or above theirs,
  # margin at or below; first-k sends each episode's first k steps (a: steps 0-3, b: steps 4-9).
  at = {"KL-ST": {0.3: 0.35}, "entropy": {0.3: 0.7}, "margin": {0.3: 0.2}, "oracle": {0.3: 8.0}, "first-k": {0.3: 2}}
  high = {m: np.flatnonzero(h).tolist() for m, h in high_steps(val, {"KL-ST": x / 20}, at, 0.3).items()}
  assert high == {"KL-ST": [7, 8, 9], "entropy": [7, 8, 9], "margin": [0, 1, 2], "oracle": [8, 9],
                  "first-k": [0, 1, 4, 5]}


def test_route_agreement_counts_the_oracle_steps_each_rule_sends_high():
  import importlib.util
  from mpr.router import data
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "route_agreement.py")
  spec = importlib.util.spec_from_file_location("route_agreement", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  d = np.array([0.0, 5.0, 1.0, 0.2, 4.0, 0.1, 3.0, 0.3, 2.0, 0.4], np.float32)
  val = data.StepTable(z=np.zeros((10, 4), np.float32), d=d, offsets=np.array([0, 4, 10]), low_entropy=d[::-1].copy(),
                       low_margin=-d, games=["a", "b"], won=np.array([True, False]))
  # A router that ranks steps as d does, and one that ranks them the other way round.
  out = bench.agreement(val, {"KL-ST": d / 10, "GRPO only": -d}, tau=1.0, shares=(0.2,))
  rows = out["shares"]["0.2"]
  assert out["reference"] == "KL-ST" and out["sensitive"] == pytest.approx(0.5)
  assert rows["KL-ST"] == {"high": 0.2, "sensitive": 1.0, "oracle_steps": 1.0, "oracle_d_mass": 1.0,
                           "oracle_episodes": 1.0, "overlap": 1.0}
  assert rows["margin"]["oracle_steps"] == 1.0                 # low margin = high d here
  assert rows["GRPO only"]["sensitive"] == 0.0 and rows["GRPO only"]["overlap"] == 0.0
  assert rows["GRPO only"]["oracle_d_mass"] == pytest.approx(0.1 / 9.0)
  # The oracle's steps are 1 (d 5, episode a) and 4 (d 4, episode b's first); first-k (k=1) sends steps 0 and 4
  # high, so it holds episode b's; entropy (d reversed) sends steps 8 and 5 high, neither.
  assert rows["first-k"]["oracle_episodes"] == 0.5
  assert rows["GRPO only"]["oracle_episodes"] == 0.0 and rows["entropy"]["oracle_episodes"] == 0.0
  assert out["oracle_paths"]["0.2"] == {"episodes": 2, "steps_per_episode": 1.0}
  assert out["spearman"]["GRPO only"] == pytest.approx(-1.0)
  assert "| 20% | KL-ST | 20.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in bench.table(out)


def test_route_agreement_bad_workdir_is_one_line_exit_2(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "route_agreement.py"), "--workdir",
                      str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
  assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
  assert p.stderr.startswith("route_agreement: error:") and "config.json: No such file or directory" in p.stderr
