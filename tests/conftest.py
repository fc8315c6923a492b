"""Shared fixtures: real ALFWorld games come from $ALFWORLD_DATA (CI materialises them)."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def alfworld_data() -> str:
  path = os.environ.get("ALFWORLD_DATA", "")
  if not os.path.isdir(os.path.join(path, "json_2.1.1", "valid_seen")):
    # Real-game tests are part of the suite, not optional: fail loudly rather than skip.
    pytest.fail("ALFWORLD_DATA must point at the ALFWorld games (see .ci/run) for the real-game tests")
  return path


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
