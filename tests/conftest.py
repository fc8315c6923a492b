"""Shared fixtures. ALFWorld games: the real ones where $ALFWORLD_DATA holds them (CI materialises
them), else a small set made once by the project's own generator and cached under the user's cache
dir; the pytest header says which. Tests of a property only the released games have are named
`test_real_*` and use the `real_games` fixture, which skips them, with the reason, on generated games."""
import os
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The generated stand-in for the released splits: enough games for every test, all six task types.
TEST_GAMES = {"train": 24, "valid_seen": 24, "valid_train": 12}
_SOURCE = {}


def pytest_configure(config):
  from mpr import compile_cache
  compile_cache.enable()     # as launch.py does: tests and their launch.py runs share compiled programs
  path = os.environ.get("ALFWORLD_DATA", "")
  if path:
    if not os.path.isdir(os.path.join(path, "json_2.1.1", "valid_seen")):
      raise pytest.UsageError(f"ALFWORLD_DATA={path} holds no json_2.1.1/valid_seen; unset it to test on "
                              "generated games")
    _SOURCE.update(kind="real", path=path)
    return
  if hasattr(config, "workerinput"):   # a pytest-xdist worker: the controller made the games
    return
  from mpr.envs import generate
  from mpr.envs.games import default_generated_dir, generated_data_dir
  # Its own folder, keyed by the counts: a test sees the same games whatever else the cache holds.
  key = "-".join(f"{s}{n}" for s, n in sorted(TEST_GAMES.items()))
  path = generated_data_dir(os.path.join(os.path.dirname(default_generated_dir()), "test-games", key), 0)
  for split, n in TEST_GAMES.items():
    generate.ensure_split(path, split, n, seed=0)
  # Subprocesses (launch.py runs) inherit it, so every test reads the same games.
  os.environ["ALFWORLD_DATA"] = path
  _SOURCE.update(kind="generated", path=path)


def pytest_report_header(config):
  kind, path = _SOURCE.get("kind"), _SOURCE.get("path")
  if kind == "real":
    return f"ALFWorld games: real, from ALFWORLD_DATA={path}"
  counts = ", ".join(f"{s} {n}" for s, n in TEST_GAMES.items())
  return (f"ALFWorld games: generated ({counts}; seed 0) in {path}: ALFWORLD_DATA is unset, "
          "so the test_real_* tests skip")


@pytest.fixture(scope="session")
def alfworld_data() -> str:
  return _SOURCE["path"]


@pytest.fixture(scope="session")
def real_games(alfworld_data) -> str:
  """The data dir of the released games; skips (with the reason) where the run uses generated ones."""
  if _SOURCE["kind"] != "real":
    pytest.skip("needs the released ALFWorld games (set ALFWORLD_DATA); this run uses generated games")
  return alfworld_data


@pytest.fixture(scope="session")
def valid_seen(alfworld_data):
  from mpr.envs.games import find_games
  return find_games("valid_seen", source="real", data_dir=alfworld_data)


@pytest.fixture(scope="session")
def one_game_per_task(valid_seen):
  from mpr.envs.games import TASK_TYPES
  return [next(g for g in valid_seen if g.task_type == t) for t in TASK_TYPES]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.fixture
def run_hosts(tmp_path):
  """Runs `argv` as an n-process jax.distributed run on this machine → each process's CompletedProcess.

  Process i gets --coordinator_address/--num_processes/--process_id=i and `per_host(i)`; they start
  together, as a cluster launcher starts them, and all are killed once `timeout` s have passed."""
  def run(argv, n, timeout, per_host=lambda i: []):
    port, deadline, procs = _free_port(), time.time() + timeout, []
    for i in range(n):
      # Output goes to files: a full pipe would stall one process and, at the next barrier, all of them.
      out, err = (open(tmp_path / f".host{i}_{port}.{k}", "w+") for k in ("out", "err"))
      procs.append((subprocess.Popen([*argv, f"--coordinator_address=localhost:{port}", f"--num_processes={n}",
                                      f"--process_id={i}", *per_host(i)], cwd=ROOT, text=True,
                                     start_new_session=True, stdout=out, stderr=err), out, err))
    try:
      for p, _, _ in procs:
        p.wait(timeout=max(1.0, deadline - time.time()))
    finally:
      for p, _, _ in procs:
        if p.poll() is None:
          os.killpg(p.pid, signal.SIGKILL)
          p.wait()
    done = []
    for p, out, err in procs:
      out.seek(0)
      err.seek(0)
      done.append(subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()))
      out.close()
      err.close()
    return done
  return run
