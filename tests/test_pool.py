"""Env pools and rollout on real ALFWorld games: determinism, both engines, and recovery from
crashed or hung workers.

Why these tests: the pool is what every stage's numbers come through, so it must give the same
episodes whatever its shape, and a dying worker must cost only the episodes it hosted.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import time

import pytest

from mpr.envs import AlfworldEnv, GameSpec
from mpr.config_util import env_config
from mpr.envs.pool import EnvPool, LocalPool, Reset, WorkerFailure, open_pool
from mpr.envs.rollout import Decision, EpisodeView, Policy, expert_policy, rollout, waves
from mpr.records import Episode
from mpr.stages.common import play_logged

EXPERT = "walkthrough"
Trace = tuple[list[str], list[str], bool]     # actions, observations before acting, won


# Small rooms: a kitchen game's reset costs 2 s or more of CPU, these cost under 0.6 s each, and
# they still cover three kinds of plan (place, examine, clean) and 3-8 step solutions.
GAME_IDS = (
    "pick_two_obj_and_place-SprayBottle-None-GarbageCan-419/trial_T20190908_164236_518264",
    "look_at_obj_in_light-CD-None-DeskLamp-314/trial_T20190907_114323_767231",
    "pick_and_place_simple-Candle-None-Toilet-429/trial_T20190908_052232_887934",
    "pick_clean_then_place_in_recep-Cloth-None-Cabinet-405/trial_T20190907_080903_889497",
    "pick_two_obj_and_place-CD-None-Drawer-304/trial_T20190907_230232_832893",
    "pick_clean_then_place_in_recep-SoapBar-None-Toilet-428/trial_T20190907_041436_588106",
)


@pytest.fixture(scope="module")
def games(valid_seen: list[GameSpec]) -> list[GameSpec]:
  """GAME_IDS from the released games; on generated ones, the smallest game files of the same task types."""
  by_id = {g.game_id: g for g in valid_seen}
  if all(i in by_id for i in GAME_IDS):
    return [by_id[i] for i in GAME_IDS]
  assert not any(i in by_id for i in GAME_IDS), "a released valid_seen that lacks some of GAME_IDS"
  picked = []
  for game_id in GAME_IDS:
    task = game_id.split("-")[0]
    picked.append(min((g for g in valid_seen if g.task_type == task and g not in picked),
                      key=lambda g: os.path.getsize(g.path)))
  return picked


@pytest.fixture(scope="module")
def reference(games: list[GameSpec]) -> dict[str, Trace]:
  """Each game played on one AlfworldEnv in this process, following the expert."""
  env = AlfworldEnv(max_steps=50, expert=EXPERT)
  traces = {}
  for g in games:
    _, res = env.reset(g)
    actions, observations = [], []
    while not res.done:
      actions.append(res.expert_action)
      observations.append(res.observation)
      res = env.step(res.expert_action)
    traces[g.game_id] = (actions, observations, res.won)
  return traces


def trace(ep: Episode) -> Trace:
  return [s.action for s in ep.steps], [s.observation for s in ep.steps], ep.won


def jobs_of(games: list[GameSpec]) -> list[tuple[GameSpec, int]]:
  return [(g, 0) for g in games]


def sabotaging_policy(pool: EnvPool, sig: signal.Signals,
                      seen: dict[int, EpisodeView]) -> tuple[Policy, list[tuple[int, int]]]:
  """Plays the expert, but signals worker 0 the first time one of its episodes asks for a 2nd action.

  Returns (policy, victim) where victim[0] becomes (episode index, pid) once it has struck.
  """
  victim: list[tuple[int, int]] = []

  def policy(views: list[EpisodeView]) -> list[Decision]:
    for v in views:
      seen[v.index] = v
      if not victim and v.t >= 1 and pool.worker_of(v.slot) == 0:
        victim.append((v.index, pool.pids[0]))
        os.kill(pool.pids[0], sig)
    return expert_policy(views)

  return policy, victim


def assert_only_worker0_failed(episodes: list[Episode], seen: dict[int, EpisodeView], pool: EnvPool,
                               victim_index: int, prefix: str, reference: dict[str, Trace]) -> None:
  failed = [i for i, ep in enumerate(episodes) if ep.failure is not None]
  assert victim_index in failed
  # Only the slots of worker 0 can have lost their episode.
  assert len(failed) <= len(pool.slots_of(0))
  for i in failed:
    assert episodes[i].failure.startswith(prefix), episodes[i].failure
    assert not episodes[i].won
    if i in seen:
      assert pool.worker_of(seen[i].slot) == 0
  for i, ep in enumerate(episodes):
    if i not in failed:
      assert trace(ep) == reference[ep.game] and ep.won


@pytest.mark.parametrize("num_workers,num_slots", [(1, 1), (2, 6)])
def test_rollout_matches_sequential_play(games, reference, num_workers, num_slots):
  finished: list[str] = []
  with EnvPool(num_workers, num_slots, expert=EXPERT) as pool:
    episodes = rollout(pool, jobs_of(games), expert_policy, on_episode=lambda i, ep: finished.append(ep.game))
  assert [ep.game for ep in episodes] == [g.game_id for g in games]
  assert sorted(finished) == sorted(g.game_id for g in games)
  for ep in episodes:
    assert ep.won and ep.failure is None
    assert trace(ep) == reference[ep.game]
    assert [s.t for s in ep.steps] == list(range(len(ep.steps)))
    assert all(s.env_seconds > 0 for s in ep.steps) and ep.reset_seconds > 0


def test_batches_do_not_depend_on_worker_timing_and_resume_replays_whole_waves(games):
  """A model's numerics depend on its batch shape, so which episodes share a policy call must be the
  same whatever the workers' speed, and a resumed run must batch every episode as an uninterrupted one."""
  jobs = [(g, 0) for g in games] + [(g, 1) for g in games[:4]]   # 10 jobs: waves of 8 and 2 on 2 slots
  assert [list(w) for w in waves(len(jobs), 2)] == [list(range(8)), [8, 9]]

  def play(num_workers, played=(), jitter=False):
    calls, got = [], {}
    rng = random.Random(0)

    def policy(views):
      if jitter:
        time.sleep(rng.uniform(0, 0.05))      # lets the workers' outcomes arrive in other orders
      calls.append([(v.index, v.t) for v in views])
      return expert_policy(views)

    with EnvPool(num_workers, 2, max_steps=4, expert=EXPERT) as pool:
      episodes = rollout(pool, jobs, policy, played=played, on_episode=lambda i, e: got.setdefault(i, e))
    return calls, episodes, got

  calls, episodes, _ = play(2, jitter=True)
  # Jobs 0-2 and 9 played earlier: both waves are replayed whole, on one worker, in the same batches.
  again, _, got = play(1, played={0, 1, 2, 9})
  assert again == calls and sorted(got) == list(range(10))
  # The first wave all played: it is skipped, and the second is batched as before.
  later, resumed, got = play(2, played=set(range(8)) | {9})
  assert resumed[:8] == [None] * 8 and sorted(got) == [8, 9]
  assert later == [c for c in calls if c[0][0] >= 8]
  assert [trace(e) for e in resumed[8:]] == [trace(e) for e in episodes[8:]]


def test_decision_info_goes_to_step_fields_and_extra(games):
  def policy(views: list[EpisodeView]) -> list[Decision]:
    return [Decision(v.expert_action, {"precision": "int8", "p_high": 0.25, "tokens": {"int8": {"decode": 7}},
                                       "logprob": -1.5}) for v in views]

  with EnvPool(1, 1, expert=EXPERT) as pool:
    (ep,) = rollout(pool, jobs_of(games[:1]), policy)
  step = ep.steps[0]
  assert (step.precision, step.p_high, step.work("decode")) == ("int8", 0.25, 7)
  assert step.extra == {"logprob": -1.5}


def test_step_cap_ends_an_episode_as_a_failure(games):
  with EnvPool(1, 1, max_steps=3) as pool:
    (ep,) = rollout(pool, jobs_of(games[:1]), lambda views: [Decision("look") for _ in views])
  assert (ep.won, ep.failure, [s.action for s in ep.steps]) == (False, "step_cap", ["look"] * 3)


def test_killed_worker_fails_only_its_episodes_and_is_restarted(games, reference):
  seen: dict[int, EpisodeView] = {}
  with EnvPool(2, 4, expert=EXPERT) as pool:
    policy, victim = sabotaging_policy(pool, signal.SIGKILL, seen)
    episodes = rollout(pool, jobs_of(games), policy)
    (victim_index, killed_pid), = victim
    assert episodes[victim_index].failure == "worker_crash: exit code -9"
    assert_only_worker0_failed(episodes, seen, pool, victim_index, "worker_crash: exit code -9", reference)
    assert pool.restarts == 1 and pool.pids[0] != killed_pid

    # The first job goes to slot 0, so the restarted worker 0 plays.
    again = rollout(pool, jobs_of(games[:3]), expert_policy)
    assert [trace(ep) for ep in again] == [reference[g.game_id] for g in games[:3]]
    assert pool.restarts == 1


def test_hung_worker_times_out_and_is_replaced(games, reference):
  seen: dict[int, EpisodeView] = {}
  # One slot per worker, so the stopped step is the only request on worker 0, not queued behind
  # a reset (whose timeout is far longer).
  with EnvPool(2, 2, expert=EXPERT, step_timeout=3.0) as pool:
    policy, victim = sabotaging_policy(pool, signal.SIGSTOP, seen)
    start = time.monotonic()
    episodes = rollout(pool, jobs_of(games), policy)
    (victim_index, stopped_pid), = victim
    assert episodes[victim_index].failure == "timeout: step took > 3 s"
    assert_only_worker0_failed(episodes, seen, pool, victim_index, "timeout: step took > 3 s", reference)
    assert pool.restarts == 1 and pool.pids[0] != stopped_pid
    with pytest.raises(ProcessLookupError):
      os.kill(stopped_pid, 0)     # killed and reaped, not left stopped
    assert time.monotonic() - start < 60


def test_bad_game_is_a_failure_not_a_dead_pool(games, reference, tmp_path):
  bad = GameSpec(str(tmp_path / "missing" / "game.tw-pddl"), "missing/trial", games[0].task_type, "valid_seen")
  with EnvPool(1, 2, expert=EXPERT) as pool:
    pid = pool.pids[0]
    pool.submit_reset(0, bad)
    (slot, outcome), = pool.collect()
    assert slot == 0 and isinstance(outcome, WorkerFailure)
    assert "No such file" in outcome.reason and "\n" not in outcome.reason

    # The same slot, and the pool as a whole, still play.
    pool.submit_reset(0, games[0])
    (slot, outcome), = pool.collect()
    assert slot == 0 and isinstance(outcome, Reset)

    bad_ep, good_ep = rollout(pool, [(bad, 0), (games[1], 0)], expert_policy)
    assert not bad_ep.won and "No such file" in bad_ep.failure and bad_ep.steps == []
    assert trace(good_ep) == reference[games[1].game_id]
    assert pool.restarts == 0 and pool.pids == [pid]


def test_a_resumed_log_replays_its_partly_logged_wave_and_logs_each_episode_once(games, tmp_path, caplog):
  path = tmp_path / "episodes.jsonl"
  jobs = jobs_of(games[:3])
  with EnvPool(1, 2, max_steps=3, expert=EXPERT) as pool:
    first = play_logged(pool, jobs, expert_policy, str(path), "expert")
    logged = {r["game"]: r for r in map(json.loads, path.read_text().splitlines())}
    altered = logged[games[0].game_id]
    altered["steps"][0]["action"] = "look"                     # as if another platform had played it
    # The third episode was lost in a kill.
    path.write_text("".join(json.dumps(logged[g.game_id]) + "\n" for g in games[:2]))
    with caplog.at_level(logging.WARNING):
      again = play_logged(pool, jobs, expert_policy, str(path), "expert")
  assert len(path.read_text().splitlines()) == 3
  assert [trace(e) for e in again[1:]] == [trace(e) for e in first[1:]]
  assert again[0].steps[0].action == "look"                  # the log keeps what it had
  assert "1 logged episode(s) played again took other actions than the log holds (first: " + altered["game"] in caplog.text


@pytest.mark.parametrize("make", [lambda: LocalPool(3, expert=EXPERT),
                                  lambda: EnvPool(2, 3, engine="fast", expert=EXPERT)],
                         ids=["fast in process", "fast in workers"])
def test_fast_engine_pools_play_the_textworld_episodes(games, reference, make):
  with make() as pool:
    episodes = rollout(pool, jobs_of(games), expert_policy)
  assert [trace(ep) for ep in episodes] == [reference[g.game_id] for g in games]
  assert all(ep.won and ep.failure is None for ep in episodes)


def test_local_pool_fails_only_the_bad_episode(games, reference, tmp_path):
  bad = GameSpec(str(tmp_path / "missing" / "game.tw-pddl"), "missing/trial", games[0].task_type, "valid_seen")
  with LocalPool(2, expert=EXPERT) as pool:
    bad_ep, good_ep = rollout(pool, [(bad, 0), (games[1], 0)], expert_policy)
    assert not bad_ep.won and "No such file" in bad_ep.failure and "\n" not in bad_ep.failure
    assert trace(good_ep) == reference[games[1].game_id]
    pool.submit_step(0, "look")     # the failed slot holds no episode: a step there fails, in one line
    (slot, outcome), = pool.collect()
    assert slot == 0 and outcome.reason == "RuntimeError: step() before reset()"
    with pytest.raises(RuntimeError, match="already has a request"):
      pool.submit_reset(1, games[0])
      pool.submit_reset(1, games[0])


def test_open_pool_follows_the_engine():
  with open_pool(env_config(num_slots=2)) as pool:
    assert isinstance(pool, LocalPool) and pool.engine == "fast" and pool.num_slots == 2
  with open_pool(env_config(engine="textworld", num_workers=1, num_slots=2), expert=EXPERT, max_steps=7) as pool:
    assert isinstance(pool, EnvPool) and (pool.engine, pool.max_steps, pool.expert) == ("textworld", 7, EXPERT)
