"""Every stage run records the code, packages and devices it ran with; resumes add entries."""
import json
import os
import subprocess
import types

import jax
import ml_collections
import pytest

from mpr import provenance
from mpr.stages import runner


def _stage(fail_first: bool):
  calls = []

  def run(config, sdir):
    calls.append(sdir)
    with open(os.path.join(sdir, "summary.md"), "w") as f:
      f.write("| a | b |\n")
    if fail_first and len(calls) == 1:
      raise KeyboardInterrupt      # killed half-way: the next run resumes the folder
    return {"value": 1}
  return types.SimpleNamespace(CONFIG_KEYS=("seed",), run=run), calls


def test_git_state_of_this_checkout():
  state = provenance.git_state()
  if state is None:
    pytest.skip("tests run outside a git checkout")
  head = subprocess.run(["git", "-C", provenance._ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
  assert state["commit"] == head and isinstance(state["dirty"], bool)


def test_not_a_checkout_is_none(tmp_path):
  assert provenance.git_state(str(tmp_path)) is None


def test_a_stage_records_each_run_and_its_summary(tmp_path):
  config = ml_collections.ConfigDict({"seed": 0})
  module, calls = _stage(fail_first=True)
  with pytest.raises(KeyboardInterrupt):
    runner.run_stage("s", module, config, str(tmp_path))
  metrics = runner.run_stage("s", module, config, str(tmp_path))
  runs = json.load(open(tmp_path / "s" / "provenance.json"))["runs"]
  assert len(runs) == 2 and len(calls) == 2
  for r in runs:
    assert r["packages"]["jax"] and r["backend"] == jax.default_backend() and r["devices"] >= 1 and r["processes"] == 1
  assert metrics["provenance"] == provenance.summary(runs)
  assert json.load(open(tmp_path / "s" / "metrics.json"))["provenance"] == metrics["provenance"]
  # Reused when finished: no third entry.
  runner.run_stage("s", module, config, str(tmp_path))
  assert len(json.load(open(tmp_path / "s" / "provenance.json"))["runs"]) == 2 and len(calls) == 2


def test_summary_and_caveat_name_mixed_and_dirty_code():
  clean = {"git": {"commit": "a" * 40, "dirty": False}}
  other = {"git": {"commit": "b" * 40, "dirty": True}}
  assert provenance.summary([clean, clean]) == {"commits": ["a" * 40], "dirty": False, "mixed": False}
  assert provenance.caveat(provenance.summary([clean])) == ""
  s = provenance.summary([clean, other])
  assert s["mixed"] and s["dirty"]
  note = provenance.caveat(s)
  assert "aaaaaaa, bbbbbbb" in note and "uncommitted" in note
  assert "outside a git checkout" in provenance.caveat(provenance.summary([{"git": None}]))
  # One run on two hosts, the second on other code: the result is mixed.
  two_hosts = {**clean, "hosts": [clean, other]}
  assert provenance.summary([two_hosts]) == {"commits": ["a" * 40, "b" * 40], "dirty": True, "mixed": True}


def test_summary_md_of_a_dirty_run_says_so(tmp_path, monkeypatch):
  monkeypatch.setattr(provenance, "git_state", lambda root=None: {"commit": "c" * 40, "dirty": True})
  module, _ = _stage(fail_first=False)
  runner.run_stage("s", module, ml_collections.ConfigDict({"seed": 0}), str(tmp_path))
  text = (tmp_path / "s" / "summary.md").read_text()
  assert text.startswith("| a | b |") and "uncommitted changes" in text
