"""Multi-host runs (mpr/hosts.py) as real jax.distributed processes on this machine (CPU, gloo)."""
import json
import os
import subprocess
import sys

import pytest

from mpr import hosts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_process_is_the_identity(tmp_path):
  assert (hosts.index(), hosts.count(), hosts.is_primary()) == (0, 1, True)
  assert hosts.share([3, 1, 2]) == [3, 1, 2] and hosts.host_path("a/log.txt") == "a/log.txt"
  tree = {"a": [1, 2]}
  assert hosts.from_primary(tree) is tree
  hosts.sync("nothing to wait for")
  hosts.check_shared_workdir(str(tmp_path))
  assert not os.listdir(tmp_path)


def test_two_processes_share_work_and_carry_host_0s_state(tmp_path, run_hosts):
  out = tmp_path / "shared"
  procs = run_hosts([sys.executable, os.path.join(ROOT, "tests", "hosts_probe.py"), str(out)], 2, timeout=300)
  for p in procs:
    assert p.returncode == 0, p.stderr[-3000:]
  h0, h1 = (json.load(open(out / f"host{i}.json")) for i in range(2))
  assert (h0["count"], h0["primary"], h1["primary"]) == (2, True, False)
  assert h0["share"] == [0, 2, 4, 6] and h1["share"] == [1, 3, 5]
  assert h1["host_path"] == "/x/log.host1.txt"
  for h in (h0, h1):
    # Host 0's values, dtypes and array kinds on both hosts; int64 beyond 2**32 survives the broadcast.
    assert h["from_primary"] == {"w": {"value": [0.0, 1.0, 2.0], "dtype": "float32", "jax": True},
                                 "bf": {"value": [1.5, 1.5], "dtype": "bfloat16", "jax": True},
                                 "step": {"value": float(2**40), "dtype": "int64", "jax": False}}
    assert h["restored_before"] == 0 and h["restored_step"] == 7 and h["step_exact"]
    assert h["restored"] == h["from_primary"]
  # Metrics files come from host 0 alone.
  rows = [json.loads(line) for line in open(out / "tb" / "metrics.jsonl")]
  assert rows == [{"step": 1, "x": 0.0}]


def test_unshared_workdir_is_one_line_exit_2_on_every_host(tmp_path, run_hosts):
  argv = [sys.executable, os.path.join(ROOT, "launch.py"),
          "--config", os.path.join(ROOT, "experiments/configs/dmr_tiny.py") + ":runlocal"]
  procs = run_hosts(argv, 2, timeout=300, per_host=lambda i: [f"--workdir={tmp_path / f'w{i}'}"])
  for p in procs:
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "is not shared by all hosts" in last, p.stderr[-2000:]


@pytest.mark.parametrize("args, needle", [
    (["--distributed"], "coordinator_address should be defined"),   # no cluster to detect here
    (["--coordinator_address=localhost:1", "--num_processes=2", "--process_id=2"], "process_id"),
])
def test_bad_multi_host_flags_are_one_line_exit_2(tmp_path, args, needle):
  p = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(tmp_path),
                      "--config", os.path.join(ROOT, "experiments/configs/dmr_tiny.py") + ":runlocal", *args],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  last = p.stderr.strip().splitlines()[-1]
  assert p.returncode == 2 and "cannot join the multi-host run" in last and needle in last, p.stderr[-2000:]
