"""Pools of ALFWorld environments with one submit/collect API: worker processes or in process.

Why workers: on TextWorld a reset costs 0.3-3 s (2 s on average over valid_seen) and a step ~50 ms
of pure-Python engine work, so one process cannot keep a batched model busy. `EnvPool` hosts
`num_slots` envs (one per episode in flight) on `num_workers` processes; the caller submits
requests without blocking, computes on the device meanwhile, and collects whatever replies are
ready. FastEnv steps in ~0.2 ms, less than a pipe's round trip, so `LocalPool` serves the same API
in the caller's process. `open_pool(config.env)` builds the one the config's engine wants.

Workers are started with "forkserver" (never fork): the parent runs JAX, whose threads do not
survive a fork. A worker that dies (SIGKILL, a segfault in the planner) is seen at once through its
process sentinel; one that hangs is caught by a per-request deadline. Either way it is killed and
restarted, every slot it hosted with a request in flight gets a `WorkerFailure`, and all of its slots
lose their episode (the next `submit_step` there fails at once; a reset starts afresh). Other
workers and slots are untouched.

  with EnvPool(num_workers=2, num_slots=8, expert="walkthrough") as pool:
    pool.submit_reset(0, game)
    for slot, outcome in pool.collect():
      ...   # Reset, Stepped or WorkerFailure
"""
from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import multiprocessing.connection as mpc
import signal
import time
from typing import Any, Optional, Union

from mpr.envs.alfworld import EpisodeEnv, StepResult
from mpr.envs.engines import check_engine, make_env
from mpr.envs.games import GameSpec

_CONTEXT = "forkserver"
_CLOSE_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True)
class Reset:
  goal: str
  result: StepResult
  env_seconds: float      # measured in the worker: the env's own time, not queueing or transfer


@dataclasses.dataclass(frozen=True)
class Stepped:
  result: StepResult
  env_seconds: float


@dataclasses.dataclass(frozen=True)
class WorkerFailure:
  reason: str             # "worker_crash: exit code -9", "timeout: step took > 60 s", "ValueError: ..."
  env_seconds: float = 0.0


Outcome = Union[Reset, Stepped, WorkerFailure]


# ----------------------------------------------------------------------------------------------
# Worker side.

def _one_line(exc: BaseException) -> str:
  lines = str(exc).strip().splitlines()
  return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _serve(envs: dict[int, EpisodeEnv], engine: str, max_steps: int, expert: Optional[str],
           slot: int, kind: str, arg: Any) -> Outcome:
  start = time.perf_counter()
  try:
    env = envs.get(slot)
    if env is None:
      env = envs[slot] = make_env(engine, max_steps=max_steps, expert=expert)
      # Building an env (first one: importing textworld) is a one-off, not the game's cost.
      start = time.perf_counter()
    if kind == "reset":
      goal, res = env.reset(arg)
      return Reset(goal, res, time.perf_counter() - start)
    return Stepped(env.step(arg), time.perf_counter() - start)
  except Exception as e:  # noqa: BLE001 - any env error is this request's failure, not the worker's
    # The env may be half-loaded after an error; a fresh one is built on the next request.
    envs.pop(slot, None)
    return WorkerFailure(_one_line(e), time.perf_counter() - start)


def _worker_main(conn: mpc.Connection, engine: str, max_steps: int, expert: Optional[str]) -> None:
  # Ctrl-C reaches the whole process group; the parent decides when workers stop.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  envs: dict[int, EpisodeEnv] = {}
  while True:
    try:
      msg = conn.recv()
    except EOFError:
      return
    if msg is None:
      return
    slot, kind, arg = msg
    conn.send((slot, _serve(envs, engine, max_steps, expert, slot, kind, arg)))


# ----------------------------------------------------------------------------------------------
# Parent side.

@dataclasses.dataclass
class _Request:
  slot: int
  kind: str               # "reset" | "step"


@dataclasses.dataclass
class _Worker:
  process: mp.process.BaseProcess
  conn: mpc.Connection
  # A worker serves its requests one at a time, in order, so only the head is running; its
  # deadline counts from when it became the head (its predecessor's reply arrived).
  queue: collections.deque[_Request] = dataclasses.field(default_factory=collections.deque)
  head_since: float = 0.0
  replied: bool = False


def _check_slot(slot: int, num_slots: int, pending: set[int]) -> None:
  """A request for `slot` is allowed: the slot exists and has no request in flight."""
  if not 0 <= slot < num_slots:
    raise ValueError(f"slot {slot} out of range [0, {num_slots})")
  if slot in pending:
    raise RuntimeError(f"slot {slot} already has a request in flight")


def _check_args(num_slots: int, engine: str, expert: Optional[str]) -> None:
  # Here, not as a failure of every episode later.
  if num_slots < 1:
    raise ValueError(f"need num_slots >= 1, got {num_slots}")
  check_engine(engine)
  if expert is not None:
    from mpr.envs import experts
    experts.check_name(expert)


class EnvPool:
  """`num_slots` env slots on `num_workers` processes; slot s lives on worker s % num_workers.

  At most one request per slot is in flight. Results come back from `collect` as (slot, Outcome).
  """

  def __init__(self, num_workers: int, num_slots: int, *, engine: str = "textworld", max_steps: int = 50,
               expert: Optional[str] = None, step_timeout: float = 60.0,
               reset_timeout: float = 120.0):
    if num_workers < 1:
      raise ValueError(f"need num_workers >= 1, got {num_workers}")
    _check_args(num_slots, engine, expert)
    self.engine = engine
    self.num_workers = num_workers
    self.num_slots = num_slots
    self.max_steps = max_steps
    self.expert = expert
    self._timeouts = {"step": step_timeout, "reset": reset_timeout}
    self._ctx = mp.get_context(_CONTEXT)
    self._pending: set[int] = set()
    self._lost: dict[int, str] = {}           # slot -> why its episode is gone
    self._ready: collections.deque[tuple[int, Outcome]] = collections.deque()
    self.restarts = 0
    self._closed = False
    self._workers = [self._start_worker() for _ in range(num_workers)]

  # --- introspection -----------------------------------------------------------------------

  @property
  def pids(self) -> list[int]:
    """Worker process ids, by worker index (they change when a worker is restarted)."""
    return [w.process.pid for w in self._workers]

  def worker_of(self, slot: int) -> int:
    return slot % self.num_workers

  def slots_of(self, worker: int) -> tuple[int, ...]:
    return tuple(range(worker, self.num_slots, self.num_workers))

  @property
  def num_pending(self) -> int:
    """Requests submitted whose outcome `collect` has not yet returned."""
    return len(self._pending)

  # --- requests ----------------------------------------------------------------------------

  def submit_reset(self, slot: int, game: GameSpec) -> None:
    self._check_free(slot)
    self._lost.pop(slot, None)
    self._send(slot, "reset", game)

  def submit_step(self, slot: int, action: str) -> None:
    self._check_free(slot)
    if slot in self._lost:
      self._pending.add(slot)
      self._ready.append((slot, WorkerFailure(self._lost[slot])))
      return
    self._send(slot, "step", action)

  def collect(self, min_results: int = 1, timeout: Optional[float] = None) -> list[tuple[int, Outcome]]:
    """Returns every outcome ready now, waiting until there are `min_results` of them.

    Returns early (possibly with fewer) when `timeout` seconds pass or nothing more is in flight.
    """
    self._check_open()
    end = None if timeout is None else time.monotonic() + timeout
    out: list[tuple[int, Outcome]] = []
    wait_s = 0.0     # the first pass only picks up what is already there
    while True:
      self._poll(wait_s)
      while self._ready:
        slot, outcome = self._ready.popleft()
        self._pending.discard(slot)
        out.append((slot, outcome))
      in_flight = any(w.queue for w in self._workers)
      if len(out) >= min_results or not in_flight:
        return out
      now = time.monotonic()
      if end is not None and now >= end:
        return out
      wait_s = self._next_deadline() - now
      if end is not None:
        wait_s = min(wait_s, end - now)
      wait_s = max(wait_s, 0.0)

  def drain(self) -> None:
    """Waits for and discards every outstanding outcome (after an aborted caller)."""
    while self._pending:
      self.collect(min_results=len(self._pending))

  # --- lifecycle ---------------------------------------------------------------------------

  def close(self) -> None:
    """Asks workers to exit, then kills any that have not within a few seconds."""
    if self._closed:
      return
    self._closed = True
    for w in self._workers:
      try:
        w.conn.send(None)
      except OSError:
        pass
    end = time.monotonic() + _CLOSE_GRACE_S
    for w in self._workers:
      w.process.join(max(end - time.monotonic(), 0.0))
      self._kill(w)

  def __enter__(self) -> "EnvPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # --- internals ---------------------------------------------------------------------------

  def _check_open(self) -> None:
    if self._closed:
      raise RuntimeError("EnvPool is closed")

  def _check_free(self, slot: int) -> None:
    self._check_open()
    _check_slot(slot, self.num_slots, self._pending)

  def _send(self, slot: int, kind: str, arg: Any) -> None:
    w = self._workers[self.worker_of(slot)]
    if not w.queue:
      w.head_since = time.monotonic()
    w.queue.append(_Request(slot, kind))
    self._pending.add(slot)
    # Requests are small and at most one per slot is queued, so this never blocks on a busy
    # (or stopped) worker; a dead one shows up as a crash on the next collect.
    try:
      w.conn.send((slot, kind, arg))
    except OSError:
      pass

  def _start_worker(self) -> _Worker:
    parent, child = self._ctx.Pipe(duplex=True)
    proc = self._ctx.Process(target=_worker_main, args=(child, self.engine, self.max_steps, self.expert),
                             name="mpr-env-worker", daemon=True)
    proc.start()
    child.close()
    return _Worker(proc, parent)

  def _poll(self, wait_s: float) -> None:
    """Waits up to wait_s for replies or deaths, then handles them and any overdue worker."""
    by_handle: dict[Any, int] = {}
    for i, w in enumerate(self._workers):
      by_handle[w.conn] = i
      by_handle[w.process.sentinel] = i
    woke = {by_handle[h] for h in mpc.wait(list(by_handle), timeout=wait_s)}
    for i in sorted(woke):
      if not self._receive(self._workers[i]):
        self._restart(i, self._crash_reason(self._workers[i]), culprit=None)
    now = time.monotonic()
    for i, w in enumerate(self._workers):
      if not (w.queue and now >= self._deadline(w)):
        continue
      self._receive(w)    # a reply that slipped in after the wait is not a hang
      if w.queue and now >= self._deadline(w):
        head = w.queue[0]
        why = f"timeout: {head.kind} took > {self._timeouts[head.kind]:g} s"
        self._restart(i, why, culprit=head.slot)

  def _receive(self, w: _Worker) -> bool:
    """Moves every reply already sent into the ready queue; False when the worker is gone."""
    # Liveness first: a worker found dead has written all it ever will, so the drain below
    # cannot miss a reply it sent just before dying.
    alive = w.process.is_alive()
    try:
      while w.conn.poll():
        slot, outcome = w.conn.recv()
        head = w.queue.popleft()
        assert head.slot == slot, f"reply for slot {slot} while slot {head.slot} was first in line"
        w.head_since = time.monotonic()
        w.replied = True
        self._ready.append((slot, outcome))
    except (EOFError, OSError):
      return False
    return alive

  def _crash_reason(self, w: _Worker) -> str:
    w.process.join(1.0)
    code = w.process.exitcode
    # Killed by a signal (exit code < 0) is a crash like any other. Exiting on its own before ever
    # replying means the worker cannot start (an import error, a main module without an
    # `if __name__ == "__main__":` guard): a restart would fail the same way, episode after episode.
    if code is not None and code >= 0 and not w.replied:
      raise RuntimeError(f"env worker could not start (exit code {code}); its traceback is on stderr")
    return f"worker_crash: exit code {code}" if code is not None else "worker_crash: connection lost"

  def _restart(self, i: int, reason: str, culprit: Optional[int]) -> None:
    """Replaces worker i; its in-flight requests fail with `reason`, its slots lose their episode."""
    w = self._workers[i]
    self._kill(w)
    self._workers[i] = self._start_worker()
    self.restarts += 1

    def reason_for(slot: int) -> str:
      if culprit is None or slot == culprit:
        return reason
      return f"{reason} (on slot {culprit}, same worker)"

    for req in w.queue:
      self._ready.append((req.slot, WorkerFailure(reason_for(req.slot))))
    for slot in self.slots_of(i):
      self._lost[slot] = reason_for(slot)

  def _kill(self, w: _Worker) -> None:
    if w.process.is_alive():
      w.process.kill()   # SIGKILL also ends a stopped process
    w.process.join()
    w.conn.close()

  def _deadline(self, w: _Worker) -> float:
    return w.head_since + self._timeouts[w.queue[0].kind]

  def _next_deadline(self) -> float:
    return min(self._deadline(w) for w in self._workers if w.queue)


class LocalPool:
  """EnvPool's API over `num_slots` envs in this process: each request is served when submitted.

  For the fast engine, whose steps cost less than a worker's pipe round trip. An env error fails
  only its episode (a `WorkerFailure` with the error's first line), as in EnvPool; there are no
  workers to crash or restart, and no timeouts (a step cannot be interrupted in process).
  """

  def __init__(self, num_slots: int, *, engine: str = "fast", max_steps: int = 50,
               expert: Optional[str] = None):
    _check_args(num_slots, engine, expert)
    self.engine, self.num_slots, self.max_steps, self.expert = engine, num_slots, max_steps, expert
    self._envs: dict[int, EpisodeEnv] = {}
    self._ready: collections.deque[tuple[int, Outcome]] = collections.deque()
    self._pending: set[int] = set()
    self._closed = False

  @property
  def num_pending(self) -> int:
    return len(self._pending)

  def submit_reset(self, slot: int, game: GameSpec) -> None:
    self._serve(slot, "reset", game)

  def submit_step(self, slot: int, action: str) -> None:
    # After an env error the slot's env is gone, and a step fails: "step() before reset()".
    self._serve(slot, "step", action)

  def collect(self, min_results: int = 1, timeout: Optional[float] = None) -> list[tuple[int, Outcome]]:
    """Every outcome not yet collected (all requests are already served)."""
    if self._closed:
      raise RuntimeError("LocalPool is closed")
    out = list(self._ready)
    self._ready.clear()
    self._pending.clear()
    return out

  def drain(self) -> None:
    self.collect()

  def close(self) -> None:
    self._closed = True
    self._envs.clear()

  def __enter__(self) -> "LocalPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _check_free(self, slot: int) -> None:
    if self._closed:
      raise RuntimeError("LocalPool is closed")
    _check_slot(slot, self.num_slots, self._pending)

  def _serve(self, slot: int, kind: str, arg: Any) -> None:
    self._check_free(slot)
    self._pending.add(slot)
    self._ready.append((slot, _serve(self._envs, self.engine, self.max_steps, self.expert, slot, kind, arg)))


Pool = Union[EnvPool, LocalPool]


def open_pool(env, *, expert: Optional[str] = None, max_steps: Optional[int] = None) -> Pool:
  """The pool `env` (a config's `env` section) asks for: in process for the fast engine, worker
  processes for TextWorld. `max_steps` overrides env.max_steps (e.g. for demonstrations)."""
  max_steps = env.max_steps if max_steps is None else max_steps
  if env.engine == "fast":
    return LocalPool(env.num_slots, engine="fast", max_steps=max_steps, expert=expert)
  return EnvPool(env.num_workers, env.num_slots, engine=env.engine, max_steps=max_steps, expert=expert,
                 step_timeout=env.step_timeout)
