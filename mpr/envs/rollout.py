"""The episode driver: plays a list of (game, seed) jobs on an env pool with a batched policy.

Why this shape: on an accelerator a model policy is fastest on a batch, and TextWorld envs are
fastest in parallel. So up to `pool.num_slots` episodes are in flight; each turn the driver submits
one action per episode to the pool (TextWorld's workers step them in parallel, FastEnv steps them in
process), and asks the policy for the next actions in one call.

Results are exactly repeatable. A model's numerics depend on its batch shape (a near-tie between
two commands can flip when an episode shares its batch with others), so batches must not depend on
timing: each turn waits for every episode in flight (lockstep), and which episodes share a call
depends only on the jobs and how long each episode runs. Jobs are played in waves of
WAVE × num_slots, each from empty slots, and a resumed run skips only waves whose every episode
is already `played` and replays the others whole: every episode is batched as in an uninterrupted
run. An episode depends on its game and the policy's answers, never on the slot or worker that
played it. A worker crash or hang fails only the episodes it was hosting (with the pool's reason);
the run goes on.

  episodes = rollout(pool, [(game, 0) for game in games], expert_policy, progress="expert")
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import zlib
from typing import Any, Callable, Container, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from mpr.envs.alfworld import StepResult
from mpr.envs.games import GameSpec
from mpr.envs.pool import Outcome, Pool, Reset, WorkerFailure
from mpr.records import STEP_FIELDS, Episode, Step

WAVE = 4   # jobs per slot in a wave: longer waves idle fewer slots at their end, shorter ones replay less on resume


@dataclasses.dataclass(frozen=True)
class EpisodeView:
  """What a policy sees of one episode that is waiting for its next action."""
  index: int                      # position in `jobs`
  game: GameSpec
  seed: int
  goal: str
  t: int                          # steps taken so far
  observation: str
  admissible: tuple[str, ...]
  expert_action: Optional[str]    # None unless the pool runs an expert
  steps: tuple[Step, ...]         # completed steps, oldest first
  slot: int                       # pool slot playing it: diagnostics only, a policy must ignore it

  def rng(self, seed: int, *salt: int) -> np.random.Generator:
    """A generator keyed by (seed, game, episode seed, step, salt): a sampled choice never depends
    on which other episodes share a batch, nor on a resume."""
    return np.random.default_rng([seed, zlib.crc32(self.game.game_id.encode()), self.seed, self.t, *salt])


@dataclasses.dataclass(frozen=True)
class Decision:
  action: str
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


Policy = Callable[[list[EpisodeView]], Sequence[Decision]]


def expert_policy(views: list[EpisodeView]) -> list[Decision]:
  """Plays the expert's action: for evaluating experts on a pool built with `expert=`."""
  for v in views:
    if v.expert_action is None:
      raise ValueError(f"no expert action for {v.game.game_id} at t={v.t}: build the pool with expert=...")
  return [Decision(v.expert_action) for v in views]


@dataclasses.dataclass
class _Run:
  """One episode in flight on one slot."""
  index: int
  game: GameSpec
  seed: int
  slot: int
  goal: str = ""
  last: Optional[StepResult] = None       # latest env result; None until the reset is back
  decision: Optional[Decision] = None     # the action in flight, if any
  steps: list[Step] = dataclasses.field(default_factory=list)
  reset_seconds: float = 0.0

  def view(self) -> EpisodeView:
    return EpisodeView(index=self.index, game=self.game, seed=self.seed, goal=self.goal,
                       t=len(self.steps), observation=self.last.observation,
                       admissible=self.last.admissible, expert_action=self.last.expert_action,
                       steps=tuple(self.steps), slot=self.slot)

  def record(self, env_seconds: float) -> None:
    """Turns the in-flight decision into a Step (observation and commands from before acting)."""
    d = self.decision
    fields = {k: v for k, v in d.info.items() if k in STEP_FIELDS}
    extra = {k: v for k, v in d.info.items() if k not in STEP_FIELDS}
    self.steps.append(Step(t=len(self.steps), observation=self.last.observation,
                           admissible=list(self.last.admissible), action=d.action,
                           env_seconds=env_seconds, extra=extra, **fields))
    self.decision = None

  def episode(self, failure: Optional[str]) -> Episode:
    won = failure is None and self.last is not None and self.last.won
    return Episode(game=self.game.game_id, task_type=self.game.task_type, seed=self.seed,
                   goal=self.goal, steps=self.steps, won=won, failure=failure,
                   reset_seconds=self.reset_seconds)


def _advance(run: _Run, outcome: Outcome) -> Optional[Episode]:
  """Applies one pool outcome; returns the finished Episode, or None when it wants an action."""
  if isinstance(outcome, WorkerFailure):
    # The action was chosen (and paid for) even though its result never came back.
    if run.decision is not None:
      run.record(outcome.env_seconds)
    return run.episode(outcome.reason)
  if isinstance(outcome, Reset):
    run.goal, run.reset_seconds = outcome.goal, outcome.env_seconds
  else:
    run.record(outcome.env_seconds)
  run.last = outcome.result
  if not run.last.done:
    return None
  return run.episode(None if run.last.won else "step_cap")


def _act(pool: Pool, policy: Policy, runs: list[_Run]) -> None:
  runs = sorted(runs, key=lambda r: r.index)   # a stable batch order, whatever the arrival order
  decisions = list(policy([r.view() for r in runs]))
  if len(decisions) != len(runs):
    raise ValueError(f"policy returned {len(decisions)} decisions for {len(runs)} views")
  for run, d in zip(runs, decisions):
    run.decision = d
    pool.submit_step(run.slot, d.action)


class _Bar:
  """A tqdm bar with the running success rate, or nothing."""

  def __init__(self, total: int, progress: Union[bool, str]):
    self._bar = None
    if progress:
      desc = progress if isinstance(progress, str) else "episodes"
      self._bar = tqdm(total=total, desc=desc, unit="ep", dynamic_ncols=True)
    self._done = self._won = 0

  def update(self, episode: Episode) -> None:
    self._done += 1
    self._won += episode.won
    if self._bar is not None:
      self._bar.set_postfix_str(f"success={self._won / self._done:.2f}", refresh=False)
      self._bar.update(1)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def waves(num_jobs: int, num_slots: int) -> list[range]:
  """The job indices of each wave, in order."""
  size = WAVE * num_slots
  return [range(i, min(i + size, num_jobs)) for i in range(0, num_jobs, size)]


def rollout(pool: Pool, jobs: Sequence[tuple[GameSpec, int]], policy: Policy, *,
            played: Container[int] = (), on_episode: Optional[Callable[[int, Episode], None]] = None,
            progress: Union[bool, str] = False) -> list[Optional[Episode]]:
  """Plays every job to the end; returns the Episodes in `jobs` order.

  `played` holds indices of jobs recorded by an earlier run: a wave of only such jobs is skipped
  (its entries are None), any other wave is played whole. `on_episode(index, episode)` is called
  as each episode finishes (in completion order). `progress` shows a tqdm bar when true (a string
  is its label).
  """
  pool.drain()   # outcomes left by an earlier, aborted rollout belong to no one here
  episodes: list[Optional[Episode]] = [None] * len(jobs)
  todo_waves = [w for w in waves(len(jobs), pool.num_slots) if not all(i in played for i in w)]
  bar = _Bar(sum(len(w) for w in todo_waves), progress)
  try:
    for wave in todo_waves:
      todo = collections.deque(wave)
      free = list(range(pool.num_slots))        # a heap: low slots first spreads over the workers
      running: dict[int, _Run] = {}
      while todo or running:
        while todo and free:
          slot, index = heapq.heappop(free), todo.popleft()
          running[slot] = _Run(index, jobs[index][0], jobs[index][1], slot)
          pool.submit_reset(slot, jobs[index][0])
        waiting = []
        for slot, outcome in pool.collect(min_results=pool.num_pending):
          run = running[slot]
          episode = _advance(run, outcome)
          if episode is None:
            waiting.append(run)
            continue
          del running[slot]
          heapq.heappush(free, slot)
          episodes[run.index] = episode
          if on_episode is not None:
            on_episode(run.index, episode)
          bar.update(episode)
        if waiting:
          _act(pool, policy, waiting)
  finally:
    bar.close()
  return episodes
