"""One process of the multi-host probe in test_hosts.py: exercises mpr.hosts and the checkpoints
across real jax.distributed processes, and writes what it saw to OUT/host<i>.json.

  python tests/hosts_probe.py OUT --coordinator_address=H:P --num_processes=N --process_id=I
"""
import argparse
import json
import os


import jax.numpy as jnp
import numpy as np

from mpr import hosts
from mpr.train import checkpoints
from mpr.train.metrics import MetricWriter


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("--coordinator_address")
  ap.add_argument("--num_processes", type=int)
  ap.add_argument("--process_id", type=int)
  a = ap.parse_args()
  hosts.initialize(a.coordinator_address, a.num_processes, a.process_id)
  i = hosts.index()
  hosts.check_shared_workdir(a.out)
  # Each host starts from its own values; what is carried on must be host 0's, exactly.
  mine = {"w": jnp.arange(3, dtype=jnp.float32) + i, "bf": jnp.full((2,), 1.5 + i, jnp.bfloat16),
          "step": np.asarray(2**40 + i, np.int64)}
  got = hosts.from_primary(mine)
  mgr, before, _ = checkpoints.restore_latest(os.path.join(a.out, "ckpt"), mine)
  checkpoints.save(mgr, 7, mine)
  mgr.wait_until_finished()
  mgr.close()
  mgr, step, restored = checkpoints.restore_latest(os.path.join(a.out, "ckpt"), mine)
  mgr.close()
  with MetricWriter(os.path.join(a.out, "tb")) as w:
    w.scalars(1, {"x": float(i)})
  hosts.sync("probe done")
  leaf = lambda t: {k: {"value": np.asarray(v, np.float64).tolist(), "dtype": str(v.dtype),
                        "jax": not isinstance(v, np.ndarray)} for k, v in t.items()}
  with open(os.path.join(a.out, f"host{i}.json"), "w") as f:
    json.dump({"index": i, "count": hosts.count(), "primary": hosts.is_primary(),
               "share": hosts.share(list(range(7))), "host_path": hosts.host_path("/x/log.txt"),
               "from_primary": leaf(got), "restored_before": before, "restored_step": step,
               "restored": leaf(restored), "step_exact": int(restored["step"]) == 2**40}, f)


if __name__ == "__main__":
  main()
