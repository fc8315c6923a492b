"""The agent: prompt histories, training sequences, the batched multi-precision policy on real games."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.agent import agent as agent_lib, demos, models, prompt
from mpr.envs.pool import EnvPool
from mpr.envs.rollout import EpisodeView, rollout
from mpr.errors import UserError
from mpr.models import engine, gguf, tiny
from mpr.records import Episode, Step


@pytest.fixture(scope="module")
def policy():
  return models.load(models.model_config())      # the shipped tiny policy


@pytest.fixture(scope="module")
def variants(policy):
  return policy.variants(["f32", "int4"])


# --- prompt ---------------------------------------------------------------------------------------

def test_history_appends_then_trims_keeping_goal_and_first_step():
  tok = tiny.tokenizer()
  h = prompt.History(tok, prompt.COMPACT, "put a apple in fridge", budget=120, trim_to=80)
  h.observe("You are in the middle of a room.", [], reserve=8)
  first = h.tokens()
  h.act("go to fridge 1")
  assert h.tokens()[:len(first)] == first and h.version == 0
  for i in range(12):
    before = h.tokens()
    h.observe(f"You arrive at cabinet {i}. On the cabinet {i}, you see nothing.", [], reserve=8)
    if h.version == 0:
      assert h.tokens()[:len(before)] == before          # append-only until a trim
    h.act(f"go to cabinet {i + 1}")
    assert h.length == len(h.tokens()) <= 120
  assert h.version >= 1
  tokens = h.tokens()
  assert tokens[:len(first)] == first                    # goal and first observation survive
  assert tok.decode(tokens).endswith("go to cabinet 12<eos>")


def test_history_cuts_an_observation_too_long_for_the_budget():
  tok = tiny.tokenizer()
  h = prompt.History(tok, prompt.COMPACT, "put a apple in fridge", budget=64)
  h.observe("You are in the middle of a room.", [], reserve=8)
  h.act("inventory")
  long = "You carry " + ", ".join(f"a mug {i}" for i in range(60)) + "."
  h.observe(long, [], reserve=8)
  assert h.version == 1 and h.length == len(h.tokens()) <= 64 - 8
  assert tok.decode(h.tokens()).endswith(" ...<act>") and "You carry a mug 0, a mug 1" in tok.decode(h.tokens())
  with pytest.raises(ValueError, match="budget"):
    prompt.History(tok, prompt.COMPACT, "put a apple in fridge", budget=10).observe("You see.", [], reserve=8)


@pytest.mark.parametrize("style", ["qwen3", "smollm2"])
def test_chat_formats_render_turns_and_parse_actions(style):
  fmt = prompt.make(f"chat-{style}")
  assert fmt.preamble.format(goal="heat some egg").startswith("<|im_start|>system\n")
  turn = fmt.observation.format(observation="You see a fridge 1.", admissible="go to fridge 1, look")
  assert turn.startswith("<|im_start|>user\nObservation: You see a fridge 1.\nAdmissible commands: go to fridge 1, look")
  assert turn.endswith("<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if style == "qwen3" else "") + "Action:")
  assert fmt.parse(" go to fridge 1<|im_end|>") == "go to fridge 1"
  think = prompt.make(f"chat-{style}", think=True)
  assert think.parse("<think>the egg is cold</think>\nI should look.\nAction: open fridge 1\n") == "open fridge 1"
  with pytest.raises(UserError, match="unknown chat style"):
    prompt.make("chat-gpt")
  with pytest.raises(UserError, match="unknown prompt format"):
    prompt.make("react")


def test_deepseek_r1_format_renders_its_own_template():
  fmt = prompt.make("chat-deepseek-r1")
  pre = fmt.preamble.format(goal="heat some egg")
  assert pre.startswith("<｜begin▁of▁sentence｜>You are an agent") and pre.endswith("Your task is to: heat some egg")
  turn = fmt.observation.format(observation="You see a fridge 1.", admissible="look")
  assert turn == ("<｜User｜>Observation: You see a fridge 1.\nAdmissible commands: look"
                  "<｜Assistant｜><think>\n\n</think>\n\nAction:")
  assert fmt.action.format(action="look") == " look<｜end▁of▁sentence｜>" and fmt.stop == "<｜end▁of▁sentence｜>"
  assert fmt.parse(" open fridge 1<｜end▁of▁sentence｜>") == "open fridge 1"
  think = prompt.make("chat-deepseek-r1", think=True)
  assert think.observation.format(observation="o", admissible="a").endswith("<｜Assistant｜><think>\n")
  assert think.parse("the egg is cold\n</think>\n\nAction: open fridge 1") == "open fridge 1"


def test_qwen2_format_renders_the_qwen25_chatml_template():
  from mpr.models.tokenizer import chat_prompt
  # A lone user message gets Qwen2.5-Instruct's default system turn, as its official template renders.
  assert chat_prompt([{"role": "user", "content": "hi"}], "qwen2") == (
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  fmt = prompt.make("chat-qwen2")
  pre = fmt.preamble.format(goal="heat some egg")
  assert pre.startswith("<|im_start|>system\nYou are an agent")
  assert pre.endswith("Your task is to: heat some egg<|im_end|>\n")
  turn = fmt.observation.format(observation="You see a fridge 1.", admissible="look")
  # No default system turn inside the history, and no think block: Qwen2.5 has no thinking mode.
  assert turn == ("<|im_start|>user\nObservation: You see a fridge 1.\nAdmissible commands: look<|im_end|>\n"
                  "<|im_start|>assistant\nAction:")
  assert fmt.action.format(action="look") == " look<|im_end|>\n" and fmt.stop == "<|im_end|>"
  assert fmt.parse(" open fridge 1<|im_end|>") == "open fridge 1"


def test_map_to_admissible():
  adm = ["go to fridge 1", "go to countertop 1", "open fridge 1"]
  assert agent_lib.map_to_admissible("Go to  fridge 1", adm) == ("go to fridge 1", False)
  assert agent_lib.map_to_admissible("goto countertop1", adm) == ("go to countertop 1", True)


# --- demonstrations → training sequences -----------------------------------------------------------

def _step(t, obs, action, expert=None):
  return Step(t=t, observation=obs, admissible=["go to fridge 1", "go to sinkbasin 1", "open fridge 1"],
              action=action, expert_action=expert)


def test_examples_mask_exactly_the_learned_actions_and_branch_on_disagreement():
  tok = tiny.tokenizer()
  ep = Episode("g", "pick_and_place_simple", 0, "put a apple in fridge",
               [_step(0, "You are in a room.", "go to fridge 1"),
                _step(1, "You arrive at fridge 1.", "go to sinkbasin 1", expert="open fridge 1"),
                _step(2, "You arrive at sinkbasin 1.", "go to fridge 1", expert="go to fridge 1")], won=False)
  ex = demos.episode_examples(ep, tok, prompt.COMPACT, budget=512, reserve=24)
  assert len(ex) == 2
  branch, main = ex
  learned = lambda x: tok.decode(x.tokens[x.loss].tolist())
  assert learned(branch) == "open fridge 1<eos>"                        # the expert's fix, in a branch
  assert learned(main) == "go to fridge 1<eos>go to fridge 1<eos>"     # agreeing steps only
  assert "go to sinkbasin 1<eos>" in tok.decode(main.tokens.tolist())   # what happened stays in context
  history = prompt.History(tok, prompt.COMPACT, ep.goal, 512)
  for s in ep.steps:
    history.observe(s.observation, s.admissible, 24)
    history.act(s.action)
  assert main.tokens.tolist() == history.tokens()                       # exactly what the agent reads
  # Only the first disagreements, when asked: the context and the agreeing steps stay as they were.
  later = Episode("g", ep.task_type, 0, ep.goal, ep.steps + [_step(3, "You arrive at fridge 1.", "go to sinkbasin 1",
                                                                    expert="open fridge 1")], won=False)
  assert len(demos.episode_examples(later, tok, prompt.COMPACT, budget=512, reserve=24)) == 3
  first, rest = demos.episode_examples(later, tok, prompt.COMPACT, budget=512, reserve=24, max_branches=1)
  assert first.tokens.tolist() == branch.tokens.tolist() and learned(rest) == learned(main)


# --- the agent ------------------------------------------------------------------------------------

def _play(variants, games, policy, *, slots, mode="score", route=None, max_steps=8):
  with EnvPool(1, slots, max_steps=max_steps) as pool:
    agent = agent_lib.Agent(policy.tok, prompt.COMPACT, variants, rows=slots, budget=768, mode=mode,
                            route=route or agent_lib.fixed(next(iter(variants))))
    return rollout(pool, [(g, 0) for g in games], agent)


def _actions(episodes):
  return [[s.action for s in e.steps] for e in episodes]


@pytest.mark.parametrize("mode", ["score", "generate"])
def test_agent_plays_real_games_with_admissible_actions_only(policy, variants, one_game_per_task, mode):
  episodes = _play(variants, one_game_per_task[:3], policy, slots=2, mode=mode)
  for e in episodes:
    assert e.failure in (None, "step_cap") and e.steps
    for s in e.steps:
      assert s.action in s.admissible and s.precision == "f32" and s.work("prefill") > 0
      assert set(s.tokens) == {"f32"}     # one variant did all the work
      if mode == "score":
        probs = s.action_probs
        assert s.work("score") > 0 and s.work("decode") == 0
        assert len(probs) == len(s.admissible) and abs(sum(probs) - 1) < 1e-4
        assert s.action == s.admissible[int(np.argmax(probs))]
      else:
        assert s.work("decode") > 0 and s.work("score") == 0 and s.generated is not None
        assert isinstance(s.mapped, bool)


def test_nan_action_scores_stop_the_run_in_one_line(policy, one_game_per_task):
  broken = models.Policy(policy.cfg, jax.tree.map(lambda x: x * jnp.nan, policy.params), policy.tok, policy.source)
  with pytest.raises(UserError, match=r"the f32 tier scored a command NaN .* at step 0"):
    _play(broken.variants(["f32"]), one_game_per_task[:1], policy, slots=1)


def test_batched_equals_unbatched(policy, variants, one_game_per_task):
  games = one_game_per_task[:4]
  batched = _play(variants, games, policy, slots=4)
  single = _play(variants, games, policy, slots=1)
  assert _actions(batched) == _actions(single)
  for a, b in zip(batched, single):
    for sa, sb in zip(a.steps, b.steps):
      np.testing.assert_allclose(sa.action_probs, sb.action_probs, atol=1e-4)


def _reference_probs(variant, tok, history_tokens, admissible):
  """Action distribution from a fresh cache: what a correct catch-up must reproduce."""
  last, cache = engine.prefill(variant, variant.init_cache(1, 1024), [history_tokens])
  conts = [tok.encode(prompt.COMPACT.action.format(action=a)) for a in admissible]
  lps = engine.score(variant, cache, last, [0] * len(conts), conts)
  totals = np.array([lp.sum() for lp in lps])
  p = np.exp(totals - totals.max())
  return p / p.sum()


def test_switching_precision_catches_up_each_cache(policy, variants, valid_seen):
  """Alternating f32/int4 steps: each variant's cache, caught up, gives a fresh prefill's answer."""
  tok = policy.tok
  agent = agent_lib.Agent(tok, prompt.COMPACT, variants, rows=2, budget=200,
                          route=agent_lib.Route(lambda views, probe: (["f32" if (v.t // 2) % 2 else "int4"
                                                                        for v in views], None)))
  game = valid_seen[0]
  adm = ["go to fridge 1", "go to cabinet 1", "go to cabinet 2", "look"]
  for t in range(9):   # long enough for the 200-token budget to trim (and force rebuilds)
    view = EpisodeView(index=0, game=game, seed=0, goal="put a clean apple in fridge", t=t,
                       observation=f"You arrive at cabinet {t}. On the cabinet {t}, you see a mug {t}.",
                       admissible=tuple(adm), expert_action=None, steps=(), slot=1)
    d = agent([view])[0]
    row = agent.rows[1]
    want = _reference_probs(variants[d.info["precision"]], tok, row.history.tokens(), adm)
    # int4 computes in bf16, where the one-pass catch-up (prefill_score) and the reference's two
    # passes round differently (~1e-3); a wrong catch-up moves the distribution far more.
    atol = 2e-4 if d.info["precision"] == "f32" else 5e-3
    np.testing.assert_allclose(d.info["action_probs"], want, atol=atol, err_msg=f"step {t}")
  assert row.history.version >= 1


def test_agent_rejects_a_tokenizer_of_another_model(variants):
  _, _, smol_tok = gguf.load_gguf(gguf.smollm2_path(), max_seq_len=64)
  with pytest.raises(UserError, match="tokenizer"):
    agent_lib.Agent(smol_tok, prompt.COMPACT, variants, rows=2, budget=256, route=agent_lib.fixed("f32"))


def test_policy_checkpoint_round_trip_and_bad_paths(tmp_path, policy):
  import jax
  import jax.numpy as jnp
  models.save_policy(str(tmp_path / "p"), policy.cfg, policy.params, tiny.ASSETS, extra={}, param_dtype="float32")
  again = models.load(models.model_config(path=str(tmp_path / "p")))
  assert again.cfg == policy.cfg
  for a, b in zip(*(map(np.asarray, jax.tree.leaves(p.params)) for p in (policy, again))):
    np.testing.assert_array_equal(a, b)   # f32: bit-exact round trip
  models.save_policy(str(tmp_path / "h"), policy.cfg, policy.params, tiny.ASSETS, extra={})   # bf16, the default
  half = models.load(models.model_config(path=str(tmp_path / "h")))
  for a, b in zip(jax.tree.leaves(policy.params), jax.tree.leaves(half.params)):
    np.testing.assert_array_equal(np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32), np.asarray(b))
  with pytest.raises(UserError, match="not a folder"):
    models.load(models.model_config(path=str(tmp_path / "missing")))
  with pytest.raises(UserError, match="model.json"):
    models.load(models.model_config(path=str(tmp_path)))
  with pytest.raises(UserError, match="tier"):
    models.load(models.model_config(tier="onnx"))


def test_smollm2_tier_acts_through_its_chat_format(one_game_per_task):
  """The pretrained tier runs the same loop: ChatML prompt, admissible commands listed (generate mode:
  test_generate_mode_token_labels_on_smollm2_chat)."""
  pol = models.load(models.model_config(tier="smollm2", max_seq_len=2048))
  ac = agent_lib.agent_config(format="chat-smollm2", budget=1536, max_action_tokens=12)
  with EnvPool(1, 1, max_steps=2) as pool:
    agent = agent_lib.from_config(ac, pol.tok, pol.variants(["f32"]), rows=1, route=agent_lib.fixed("f32"))
    (episode,) = rollout(pool, [(one_game_per_task[0], 0)], agent)
  assert len(episode.steps) == 2
  for s in episode.steps:
    assert s.action in s.admissible and s.work("prefill") > 0
  # The cache was kept: step 1 prefilled only step 0's action and the new turn.
  assert sum(s.work("prefill") for s in episode.steps) == agent.rows[0].history.length


# --- token-level labels in generate mode (the paper's d_t over a generated step) -----------------

def test_teacher_forcing_replays_the_generation():
  """Fed back its own greedy tokens, a variant gives the distributions they were drawn from."""
  pol = models.load(models.model_config())
  v = pol.variants(["f32"])["f32"]
  seqs = [pol.tok.encode("go to the kitchen and look"), pol.tok.encode("open fridge 1")]
  last, cache = engine.prefill(v, v.init_cache(2, 64), seqs)
  lengths = cache["lengths"]
  gen = engine.generate(v, cache, last, max_new_tokens=6)
  cache = engine.truncate_cache(gen.cache, lengths)
  toks = [gen.tokens[r, :gen.lengths[r]].tolist() for r in range(2)]
  lp, lens = engine.teacher_forced(v, cache, last, toks)
  lp = np.asarray(lp)
  for r in range(2):
    k = lens[r]
    assert (lp[r, :k].argmax(-1) == np.asarray(toks[r])).all()
    np.testing.assert_allclose(lp[r, np.arange(k), toks[r]], gen.logprobs[r, :k], atol=1e-5)
  assert (np.asarray(cache["lengths"]) == np.asarray(lengths)).all()     # the cache is untouched
  # The per-token labels: zero against itself, and each KL the direction its name says.
  from mpr.router import labels
  low = pol.variants(["int4"])["int4"]
  lo_last, lo_cache = engine.prefill(low, low.init_cache(2, 64), seqs)
  lp_low, _ = engine.teacher_forced(low, lo_cache, lo_last, toks)
  same = agent_lib._token_labels(jnp.asarray(lp), jnp.asarray(lp))
  assert float(jnp.abs(same["kl_high_low"]).max()) < 1e-6 and float(jnp.abs(same["kl_low_high"]).max()) < 1e-6
  both = {k: np.asarray(x) for k, x in agent_lib._token_labels(jnp.asarray(lp), lp_low).items()}
  lp_low = np.asarray(lp_low)
  for r in range(2):
    for j in range(lens[r]):
      for key, direction in (("kl_high_low", "high_low"), ("kl_low_high", "low_high")):
        assert both[key][r, j] == pytest.approx(labels.divergence(lp[r, j], lp_low[r, j], direction), rel=1e-3, abs=1e-6)
      assert both["low_entropy"][r, j] == pytest.approx(labels.entropy(lp_low[r, j]), rel=1e-3, abs=1e-6)
      assert both["low_margin"][r, j] == pytest.approx(labels.margin(lp_low[r, j]), abs=1e-5)


def _collect_generate(pol, tiers, ac, games, act="random", max_steps=2):
  from mpr.router.routes import collect_route
  with EnvPool(1, len(games), max_steps=max_steps) as pool:
    agent = agent_lib.from_config(ac, pol.tok, pol.variants(list(tiers)), rows=len(games), record_z=True,
                                  route=collect_route(*tiers, act=act, seed=0, p=0.5, mode="generate"))
    return rollout(pool, [(g, 0) for g in games], agent), agent


def _check_token_labels(episodes, tiers):
  from mpr.stages.collect import step_table
  steps = [s for e in episodes for s in e.steps]
  assert {s.precision for s in steps} <= set(tiers) and steps
  for s in steps:
    k = s.tokens[s.precision]["decode"]
    lab = s.token_labels
    assert all(len(lab[key]) == k for key in agent_lib.TOKEN_LABELS) and lab["thinking"] == 0
    assert min(lab["kl_high_low"] + lab["kl_low_high"]) >= 0 and all(0 <= m <= 1 for m in lab["low_margin"])
    for name in tiers:                       # both tiers read the generated tokens
      assert s.tokens[name]["score"] == k
  mean, total = (step_table(episodes, *tiers, "high_low", reduce) for reduce in ("mean", "sum"))
  assert np.isfinite(mean.d).all() and (total.d >= mean.d - 1e-9).all() and mean.d.max() > 0
  assert mean.num_steps == len(steps) and mean.z.shape[0] == len(steps)
  assert all(s.action in s.admissible for s in steps)


def test_generate_mode_collects_token_level_labels_on_the_tiny_policy(one_game_per_task):
  pol = models.load(models.model_config())
  ac = agent_lib.agent_config(mode="generate", max_action_tokens=12)
  episodes, _ = _collect_generate(pol, ("bf16", "int4"), ac, one_game_per_task[:2])
  _check_token_labels(episodes, ("bf16", "int4"))
  with pytest.raises(UserError, match="need agent.mode=generate"):
    agent_lib.Agent(pol.tok, agent_lib.prompt_format(ac), pol.variants(["bf16", "int4"]), rows=1, budget=256,
                    route=agent_lib.Route(lambda v, p: (["bf16"], None), teacher=("bf16", "int4")))


def test_generate_mode_token_labels_on_smollm2_chat(one_game_per_task):
  pol = models.load(models.model_config(tier="smollm2", max_seq_len=2048))
  ac = agent_lib.agent_config(format="chat-smollm2", mode="generate", budget=1536, max_action_tokens=12)
  (episode,), agent = _collect_generate(pol, ("bf16", "int8"), ac, one_game_per_task[:1], act="high")
  _check_token_labels([episode], ("bf16", "int8"))
  # Both tiers kept their caches: each prefilled exactly the history, once (generated tokens rolled back).
  for name in ("bf16", "int8"):
    assert sum(s.tokens[name]["prefill"] for s in episode.steps) == agent.rows[0].history.length


def test_thinking_tokens_can_be_left_out_of_d():
  from mpr.stages.collect import token_step
  tok = models.load(models.model_config(tier="smollm2", max_seq_len=2048)).tok
  ids = tok.encode("<think>the apple is in the fridge</think> Action: open fridge 1")
  n = agent_lib._thinking_tokens(tok, ids)
  assert "</think>" in tok.decode(ids[:n]) and "</think>" not in tok.decode(ids[:n - 1]) and n < len(ids)
  assert agent_lib._thinking_tokens(tok, ids[:3]) == 3 and agent_lib._thinking_tokens(tok, tok.encode("go")) == 0
  # DeepSeek-R1's prompt opens the block itself: a generation cut off inside it holds neither tag.
  assert prompt.make("chat-deepseek-r1", think=True).opens_thinking and not prompt.make("chat-qwen3", think=True).opens_thinking
  assert agent_lib._thinking_tokens(tok, tok.encode("the apple is"), opened=True) == len(tok.encode("the apple is"))
  lab = {"kl_high_low": [4.0, 4.0, 1.0], "kl_low_high": [2.0, 2.0, 0.0], "low_entropy": [1.0, 1.0, 0.5],
         "low_margin": [0.1, 0.1, 0.9], "thinking": 2}
  assert token_step(lab, "high_low", "mean") == (3.0, pytest.approx(2.5 / 3), pytest.approx(1.1 / 3))
  assert token_step(lab, "high_low", "sum", thinking=False) == (1.0, 0.5, 0.9)
  assert token_step(lab, "symmetric", "sum") == (6.5, pytest.approx(2.5 / 3), pytest.approx(1.1 / 3))
  assert token_step({**lab, "thinking": 3}, "low_high", "sum", thinking=False)[0] == 4.0   # cut off: all count
  with pytest.raises(UserError, match="token_reduce"):
    token_step(lab, "high_low", "max")
