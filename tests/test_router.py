"""The router: step tables and history windows, KL-ST labels and metrics, the model, KL-ST training."""
import json

import jax
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.router import data, labels, model, routes, sl
from mpr.train.metrics import MetricWriter


def _table(seed: int, episodes: int = 30, dim: int = 8) -> data.StepTable:
  """Random episodes whose KL is carried by embedding dim 0 (exp(z_0)), with a few unknown KLs."""
  rng = np.random.default_rng(seed)
  lens = rng.integers(3, 14, size=episodes)
  n = int(lens.sum())
  z = rng.normal(size=(n, dim)).astype(np.float32)
  d = np.exp(z[:, 0]).astype(np.float32)
  d[::17] = np.nan
  return data.StepTable(z=z, d=d, offsets=np.r_[0, np.cumsum(lens)].astype(np.int64),
                        low_entropy=rng.random(n).astype(np.float32), low_margin=rng.random(n).astype(np.float32),
                        games=[f"game_{i}" for i in range(episodes)], won=rng.random(episodes) < 0.5)


def _cfg(**kw):
  return model.router_config(width=32, heads=2, layers=1, mlp_dim=64, max_len=8, **kw)


# --- labels and metrics ---------------------------------------------------------------------------

def test_labels_by_hand():
  d = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
  # sorted 0.1 0.2 0.3 0.5 0.9; the 0.6 quantile sits 2.4 of 4 gaps in: 0.3 + 0.4 * (0.5 - 0.3) = 0.38
  tau = labels.threshold(d, quantile=0.6)
  assert tau == pytest.approx(0.38)
  assert labels.labels(d, tau).tolist() == [0, 1, 0, 1, 0]
  assert labels.class_weights([0, 1, 0, 1, 0]) == pytest.approx((5 / 6, 5 / 4))
  assert labels.threshold(d, tau=0.3) == 0.3
  assert labels.labels(d, 0.3).tolist() == [0, 1, 0, 1, 1]
  assert labels.threshold(np.r_[d, np.nan], quantile=0.6) == pytest.approx(0.38)   # unknown KLs ignored


def test_threshold_errors():
  d = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
  with pytest.raises(UserError, match=r"outside the KL data range \[0.1, 0.9\]"):
    labels.threshold(d, tau=5.0)
  with pytest.raises(UserError, match="no finite KL"):
    labels.threshold([], quantile=0.5)
  with pytest.raises(UserError, match="no finite KL"):
    labels.threshold([np.nan, np.nan], quantile=0.5)
  with pytest.raises(UserError, match=r"all 5 steps in one class \(KL data range \[1, 2\]\)"):
    labels.threshold([1.0, 1.0, 1.0, 1.0, 2.0], quantile=0.5)
  with pytest.raises(UserError, match="exactly one of tau and quantile"):
    labels.threshold(d, tau=0.3, quantile=0.5)
  with pytest.raises(UserError, match="exactly one of tau and quantile"):
    labels.threshold(d)
  with pytest.raises(UserError, match=r"quantile must be in \(0, 1\)"):
    labels.threshold(d, quantile=1.0)
  with pytest.raises(UserError, match="both classes"):
    labels.class_weights([1, 1, 1])
  with pytest.raises(UserError, match="unknown"):
    labels.labels([0.1, np.nan], 0.2)


def test_auroc_and_average_precision_by_hand():
  s, y = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
  # positive > negative in 3 of 4 pairs (0.35 < 0.4 is the miss)
  assert labels.auroc(s, y) == pytest.approx(0.75)
  # ranked 0.8+ 0.4- 0.35+ 0.1-: recall steps 0.5 at precision 1, 0.5 at precision 2/3
  assert labels.average_precision(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
  # ties: the tied positive/negative pair counts half; tied scores are one threshold
  assert labels.auroc([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.75)
  assert labels.average_precision([0.5, 0.5, 0.2], [1, 0, 0]) == pytest.approx(0.5)
  s, y = [0.9, 0.7, 0.7, 0.1], [1, 1, 0, 1]
  assert labels.auroc(s, y) == pytest.approx((1 + 0.5 + 0) / 3)
  assert labels.average_precision(s, y) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
  with pytest.raises(UserError, match="both classes"):
    labels.auroc([0.1, 0.2], [1, 1])
  # ranks (AUROC's, and the rank correlations of route_agreement): ties share their mean rank
  assert labels.ranks([0.9, 0.7, 0.7, 0.1]).tolist() == [4.0, 2.5, 2.5, 1.0]


# --- the step table -------------------------------------------------------------------------------

def test_windows_are_right_aligned_truncated_and_stay_in_their_episode():
  z = (np.arange(8, dtype=np.float32) + 1)[:, None]        # row r holds r + 1 (never 0, the padding)
  offsets = np.array([0, 3, 8])
  zw, mask = data.windows(z, offsets, np.array([0, 2, 3, 7]), max_len=4)
  assert zw.shape == (4, 4, 1) and zw.dtype == np.float32 and mask.dtype == bool
  assert zw[..., 0].tolist() == [[0, 0, 0, 1],        # first step: only itself, at the last slot
                                 [0, 1, 2, 3],        # whole 3-step history
                                 [0, 0, 0, 4],        # first step of episode 1: nothing from episode 0
                                 [5, 6, 7, 8]]        # 5-step history cut to its last 4
  assert mask.tolist() == [[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]]


def test_windows_match_a_per_row_reference():
  t = _table(1)
  rows = np.arange(t.num_steps)
  zw, mask = data.windows(t.z, t.offsets, rows, max_len=5)
  for r in rows:
    e = np.searchsorted(t.offsets, r, side="right") - 1
    hist = t.z[max(t.offsets[e], r - 4):r + 1]
    assert mask[r].sum() == len(hist)
    np.testing.assert_array_equal(zw[r, 5 - len(hist):], hist)
    assert not zw[r, :5 - len(hist)].any()


def test_table_save_load_concat_and_errors(tmp_path):
  a, b = _table(2, episodes=3), _table(3, episodes=2)
  path = str(tmp_path / "t" / "steps.npz")
  data.save(path, a)
  back = data.load(path)
  for k in ("z", "d", "offsets", "low_entropy", "low_margin", "won"):
    np.testing.assert_array_equal(getattr(back, k), getattr(a, k))
  assert back.games == a.games
  both = data.concat([a, b])
  assert both.num_episodes == 5 and both.num_steps == a.num_steps + b.num_steps
  np.testing.assert_array_equal(both.z[both.offsets[3]:both.offsets[4]], b.z[:b.offsets[1]])
  data.validate(both, embed_dim=8)

  with pytest.raises(UserError, match="no step table"):
    data.load(str(tmp_path / "missing.npz"))
  (tmp_path / "bad.npz").write_bytes(b"not a zip file at all")
  with pytest.raises(UserError, match="corrupt step table"):
    data.load(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "shape.npz", z=a.z, d=a.d, offsets=a.offsets[::-1], low_entropy=a.low_entropy,
           low_margin=a.low_margin, games=np.asarray(a.games), won=a.won)
  with pytest.raises(UserError, match="offsets must increase"):
    data.load(str(tmp_path / "shape.npz"))
  with pytest.raises(UserError, match="empty step table"):
    data.validate(data.StepTable(z=np.zeros((0, 8), np.float32), d=np.zeros(0), offsets=np.array([0]),
                                 low_entropy=np.zeros(0), low_margin=np.zeros(0), games=[], won=np.zeros(0, bool)))


def test_mismatched_embedding_width_is_a_clear_error():
  t = _table(4, dim=64)
  with pytest.raises(UserError, match="step input width 64 does not match the router.s 128"):
    data.validate(t, embed_dim=128)
  params = model.init_params(_cfg(), embed_dim=128, seed=0)
  zw, mask = data.windows(t.z, t.offsets, np.arange(4), 8)
  with pytest.raises(UserError, match="step input width 64 does not match the router.s 128"):
    model.p_high(params, _cfg(), zw, mask)


# --- the model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_router_shapes_and_padding_invariance(pooling):
  cfg = _cfg(pooling=pooling)
  t = _table(5)
  params = model.init_params(cfg, embed_dim=8, seed=0)
  zw, mask = data.windows(t.z, t.offsets, np.arange(16), cfg.max_len)
  router = model.from_config(cfg)
  logits = router.apply({"params": params}, zw, mask)
  assert logits.shape == (16, 2)
  p = model.p_high(params, cfg, zw, mask)
  assert p.shape == (16,) and np.all((np.asarray(p) > 0) & (np.asarray(p) < 1))
  np.testing.assert_allclose(p, jax.nn.softmax(logits)[:, model.HIGH], rtol=1e-6)
  assert not mask.all()           # the first steps of episodes are padded
  garbage = zw.copy()
  garbage[~mask] = np.random.default_rng(0).normal(scale=1e3, size=garbage[~mask].shape)
  garbage[~mask & (np.arange(cfg.max_len) % 2 == 0)] = np.nan
  np.testing.assert_array_equal(router.apply({"params": params}, garbage, mask), logits)
  compiled = model._p_high._cache_size()
  np.testing.assert_array_equal(model.p_high(params, cfg, garbage, mask), p)
  assert model._p_high._cache_size() == compiled      # same (B, L): no recompilation


def test_history_longer_than_max_len_equals_its_last_max_len_steps():
  cfg = _cfg()
  t = _table(6)
  params = model.init_params(cfg, embed_dim=8, seed=1)
  rows = np.flatnonzero(np.diff(t.offsets) > 9)[:3]            # episodes longer than max_len
  rows = t.offsets[rows + 1] - 1                                # their last steps
  long_z, long_m = data.windows(t.z, t.offsets, rows, 12)
  short_z, short_m = data.windows(t.z, t.offsets, rows, cfg.max_len)
  assert long_m.sum(1).min() > cfg.max_len
  router = model.from_config(cfg)
  np.testing.assert_array_equal(router.apply({"params": params}, long_z, long_m),
                                router.apply({"params": params}, short_z, short_m))


def test_table_p_high_matches_the_online_router_on_each_history():
  # route_eval calibrates K on a collected table; the agent routes from live histories. Both must
  # see the same windows, or the calibrated K would aim at another distribution.
  cfg = _cfg()
  t = _table(7, episodes=6)
  params = model.init_params(cfg, embed_dim=8, seed=2)
  p_table = routes.table_p_high(params, cfg, t, batch_size=16)
  online = [routes.router_p_high(params, cfg, [t.z[t.offsets[e]:r + 1]])[0]
            for e in range(len(t.games)) for r in range(t.offsets[e], t.offsets[e + 1])]
  assert p_table.shape == (t.num_steps,)
  np.testing.assert_allclose(p_table, online, atol=1e-6)


def test_nan_router_output_and_nan_loss_stop_the_run(tmp_path):
  cfg = _cfg()
  params = jax.tree.map(lambda x: x * np.nan, model.init_params(cfg, embed_dim=8, seed=2))
  with pytest.raises(UserError, match=r"p\(high\) is NaN"):
    routes.router_p_high(params, cfg, [np.zeros((3, 8), np.float32)])
  with MetricWriter(str(tmp_path / "tb")) as w:
    w.scalars(1, {"train/loss": 0.5, "val/auroc": float("nan")})    # an undefined score is not divergence
    with pytest.raises(UserError, match="train/loss is nan at step 2"):
      w.scalars(2, {"train/loss": float("nan")})


def test_router_save_load_round_trip_and_errors(tmp_path):
  cfg = _cfg(pooling="mean")
  params = model.init_params(cfg, embed_dim=8, seed=2)
  model.save_router(str(tmp_path / "r"), cfg, params, {"tau": 0.5})
  cfg2, params2, meta = model.load_router(str(tmp_path / "r"))
  assert cfg2 == cfg and meta == {"tau": 0.5}
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(UserError, match="not a saved router"):
    model.load_router(str(tmp_path / "nowhere"))
  desc = json.loads((tmp_path / "r" / "router.json").read_text())
  desc["config"]["width"] = 64
  (tmp_path / "r" / "router.json").write_text(json.dumps(desc))
  with pytest.raises(UserError, match="has shape"):
    model.load_router(str(tmp_path / "r"))
  (tmp_path / "r" / "params.msgpack").write_bytes(b"\xc1\xc1garbage")
  with pytest.raises(UserError, match="corrupt router params"):
    model.load_router(str(tmp_path / "r"))
  with pytest.raises(UserError, match="unknown router config field 'depth'"):
    model.router_config(depth=3)


# --- KL-ST training -------------------------------------------------------------------------------

def _sl(**kw):
  return sl.sl_config(**{"epochs": 6, "batch_size": 64, "lr": 3e-3, "warmup_steps": 4, **kw})


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
  a = sl.epoch_batches(100, 32, seed=3, epoch=2)
  b = sl.epoch_batches(100, 32, seed=3, epoch=2)
  assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
  assert sorted(np.concatenate([i[v] for i, v in a]).tolist()) == list(range(100))
  assert [int(v.sum()) for _, v in a] == [32, 32, 32, 4]
  assert not all((x[0] == y[0]).all() for x, y in zip(a, sl.epoch_batches(100, 32, seed=3, epoch=3)))


def test_kl_st_learns_a_separable_problem(tmp_path):
  train_t, val_t = _table(10, episodes=40), _table(11, episodes=15)
  params, result = sl.train(_cfg(), _sl(), train_t, val_t, str(tmp_path))
  assert result["val_auroc"] > 0.95, result
  finite = train_t.d[np.isfinite(train_t.d)]
  assert result["tau"] == pytest.approx(float(np.quantile(finite, 0.8)))
  assert result["pos_rate_train"] == pytest.approx(0.2, abs=0.02)
  cfg, loaded, meta = model.load_router(str(tmp_path / "router"))
  assert meta["tau"] == result["tau"] and cfg.max_len == 8
  zw, mask = data.windows(val_t.z, val_t.offsets, np.arange(val_t.num_steps), cfg.max_len)
  np.testing.assert_array_equal(model.p_high(loaded, cfg, zw, mask), model.p_high(params, cfg, zw, mask))
  logged = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
  assert [r["train/epoch"] for r in logged] == list(range(1, result["epochs_run"] + 1))


def test_kl_st_resume_after_a_kill_is_exact(tmp_path, monkeypatch):
  train_t, val_t = _table(12, episodes=20), _table(13, episodes=8)
  cfg, sc = _cfg(), _sl(epochs=5, batch_size=32)
  ref, ref_result = sl.train(cfg, sc, train_t, val_t, str(tmp_path / "ref"))

  # The warmup-cosine schedule spans all epochs, so a 3-epoch run is not a prefix of a 5-epoch one:
  # the interruption is a kill inside epoch 4 of the 5-epoch run, after epoch 3's checkpoint.
  per_epoch = -(-int(np.isfinite(train_t.d).sum()) // sc.batch_size)
  real_step, calls = sl._train_step, {"n": 0}

  def dying_step(*args):
    calls["n"] += 1
    if calls["n"] == 3 * per_epoch + 2:
      raise KeyboardInterrupt
    return real_step(*args)

  monkeypatch.setattr(sl, "_train_step", dying_step)
  with pytest.raises(KeyboardInterrupt):
    sl.train(cfg, sc, train_t, val_t, str(tmp_path / "run"))
  monkeypatch.setattr(sl, "_train_step", real_step)
  resumed, result = sl.train(cfg, sc, train_t, val_t, str(tmp_path / "run"))
  assert result == ref_result
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  final = lambda p: json.loads((p / "tb" / "metrics.jsonl").read_text().splitlines()[-1])
  assert final(tmp_path / "run") == final(tmp_path / "ref")     # the last epoch's params agree too


# --- router inputs beyond z -----------------------------------------------------------------------

def _scored_episodes(seed: int, episodes: int = 4, dim: int = 6):
  """Logged episodes as collect writes them: z and both tiers' action log-scores at every step."""
  from mpr.agent.agent import encode_z
  from mpr.records import Episode, Step
  rng = np.random.default_rng(seed)
  out = []
  for e in range(episodes):
    steps = [Step(t=t, observation="", admissible=["a", "b", "c"], action="a", precision="hi",
                  z=encode_z(rng.normal(size=dim)),
                  probe_logits={k: [round(float(x), 5) for x in rng.normal(size=3) * 3] for k in ("hi", "lo")})
             for t in range(int(rng.integers(2, 9)))]
    out.append(Episode(f"g{e}", "pick_and_place_simple", 0, "", steps, won=bool(e % 2)))
  return out


def test_router_inputs_are_the_same_from_a_table_a_log_and_a_live_route():
  from mpr.agent.agent import Probe, decode_z
  from mpr.envs.rollout import EpisodeView
  from mpr.router import features
  from mpr.stages.collect import step_table
  eps = _scored_episodes(0)
  table = step_table(eps, "hi", "lo", "high_low")
  inputs = ("z", "entropy", "margin", "prev_entropy", "prev_margin", "step")
  x = features.featurize(inputs, table).z
  assert x.shape == (table.num_steps, features.width(inputs, 6)) == (table.num_steps, 11)
  np.testing.assert_allclose(x, np.concatenate([features.episode_inputs(inputs, e, "lo") for e in eps]))
  e, t = eps[1], len(eps[1].steps) - 1
  row = table.offsets[1] + t
  assert x[row, 6:].tolist() == pytest.approx([table.low_entropy[row], table.low_margin[row],
                                               table.low_entropy[row - 1], table.low_margin[row - 1], t / 50])
  assert x[table.offsets[1], 8:].tolist() == pytest.approx([0.0, 1.0, 0.0])       # t = 0: no previous step
  z = np.stack([decode_z(s.z) for s in e.steps])
  live = features.live_inputs(inputs, z, e.steps[:t], np.asarray(e.steps[t].probe_logits["lo"]) + 1e-7, "lo")
  np.testing.assert_allclose(live, x[table.offsets[1]:row + 1], atol=1e-6)
  # The router route reads the same inputs live, and has the low tier score every step for them.
  cfg = _cfg(inputs=inputs)
  params = model.init_params(cfg, embed_dim=11, seed=0)
  route = routes.router_route(params, cfg, "hi", "lo")
  assert route.embed == "lo" and route.probe == ("lo",)
  assert routes.router_route(params, _cfg(inputs=("z", "step")), "hi", "lo").probe == ()
  view = EpisodeView(index=0, game=None, seed=0, goal="", t=t, observation="", admissible=("a", "b", "c"),
                     expert_action=None, steps=tuple(e.steps[:t]), slot=0)
  _, p = route.choose([view], Probe(z=[z], logits={"lo": [np.asarray(e.steps[t].probe_logits["lo"])]}))
  np.testing.assert_allclose(p, routes.table_p_high(params, cfg, table)[row:row + 1], atol=1e-6)


def test_router_inputs_are_checked_and_saved_with_the_router(tmp_path):
  from mpr.router import features
  for bad in ((), ("z", "z"), ("z", "logits")):
    with pytest.raises(UserError, match="router.inputs must be distinct names"):
      features.check(bad)
  cfg = _cfg(inputs=("z", "entropy"))
  model.save_router(str(tmp_path / "r"), cfg, model.init_params(cfg, embed_dim=9), {})
  loaded, _, _ = model.load_router(str(tmp_path / "r"))
  assert loaded.inputs == ("z", "entropy") and loaded.to_dict() == cfg.to_dict()


def test_kl_st_with_the_low_tiers_entropy_learns_labels_carried_by_it(tmp_path):
  """Labels that only the entropy input carries: z alone cannot learn them, z + entropy can."""
  def table(seed):
    t = _table(seed, episodes=40)
    t.low_entropy = (3 * np.random.default_rng(seed).random(t.num_steps)).astype(np.float32)   # nats, as for ~20 commands
    t.d = np.exp(t.low_entropy)
    return t
  _, with_entropy = sl.train(_cfg(inputs=("z", "entropy")), _sl(epochs=15), table(20), table(21), str(tmp_path / "a"))
  _, z_only = sl.train(_cfg(), _sl(epochs=15), table(20), table(21), str(tmp_path / "b"))
  assert with_entropy["val_auroc"] > 0.9 and z_only["val_auroc"] < 0.7, (with_entropy["val_auroc"], z_only["val_auroc"])
