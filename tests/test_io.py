import json
import os
import re

import pytest

from mpr import io
from mpr.errors import UserError


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



def _log_with_bad_line(path, bad: str) -> str:
  """Eight records, the third replaced by `bad`; returns the file's text."""
  lines = [json.dumps({"i": i}) for i in range(8)]
  lines[2] = bad
  text = "\n".join(lines) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


@pytest.mark.parametrize("bad", ['{"i": 2, "trunc', "", "\x00\x00\x00", "[2]"])
def test_jsonl_corrupt_middle_line_is_an_error_and_keeps_the_file(tmp_path, bad):
  p = str(tmp_path / "log.jsonl")
  text = _log_with_bad_line(p, bad)
  for read in (io.JsonlLog, io.read_jsonl):
    with pytest.raises(UserError, match="^" + re.escape(p) + ":3: ") as e:
      read(p)
    assert "\n" not in str(e.value)
    with open(p) as f:
      assert f.read() == text


@pytest.mark.parametrize("tail", ['{"i": 8', '{"i": 8}', "garbage\n", "\n"])
def test_jsonl_torn_last_line_is_repaired_and_good_records_kept(tmp_path, tail):
  p = str(tmp_path / "log.jsonl")
  with open(p, "w") as f:
    f.write("".join(json.dumps({"i": i}) + "\n" for i in range(8)) + tail)
  assert [r["i"] for r in io.read_jsonl(p)] == list(range(8))
  with io.JsonlLog(p) as log:
    assert [r["i"] for r in log.records] == list(range(8))
  with open(p) as f:
    assert [json.loads(l)["i"] for l in f] == list(range(8))

def test_atomic_write_keeps_old_file_on_failure(tmp_path):
  p = str(tmp_path / "m.json")
  io.atomic_write_json(p, {"ok": True})
  with pytest.raises(TypeError):
    io.atomic_write_json(p, {"bad": object()})
  assert io.read_json(p) == {"ok": True}
