import json
import os

import pytest

from mpr import io


def test_atomic_write_replaces_whole_file(tmp_path):
  p = str(tmp_path / "a" / "m.json")
  io.atomic_write_json(p, {"x": 1})
  io.atomic_write_json(p, {"x": 2})
  assert io.read_json(p) == {"x": 2}
  assert [f for f in os.listdir(tmp_path / "a") if f.startswith(".tmp")] == []


def test_jsonl_log_drops_torn_last_line(tmp_path):
  p = str(tmp_path / "log.jsonl")
  with io.JsonlLog(p) as log:
    log.append({"i": 0})
    log.append({"i": 1})
  with open(p, "a") as f:
    f.write('{"i": 2, "trunc')   # a kill in the middle of a write
  log = io.JsonlLog(p)
  assert log.records == [{"i": 0}, {"i": 1}]
  log.append({"i": 3})
  log.close()
  with open(p) as f:
    assert [json.loads(l)["i"] for l in f] == [0, 1, 3]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
  p = str(tmp_path / "m.json")
  io.atomic_write_json(p, {"ok": True})
  with pytest.raises(TypeError):
    io.atomic_write_json(p, {"bad": object()})
  assert io.read_json(p) == {"ok": True}
