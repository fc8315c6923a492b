"""Atomic, resumable file output.

Everything a stage produces is written so that a kill at any instant leaves either the old file
or the new one (write to a temp file in the same directory, fsync, rename), and append-only JSONL
logs are read back tolerating a torn last line. This is what makes every stage resumable.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable, Iterator


def atomic_write_text(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp.")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


class JsonlLog:
  """Append-only JSONL file: each record is flushed and fsynced before `append` returns.

  On open, a torn final line (the process was killed mid-write) is truncated away, so the
  records read back are exactly those whose `append` completed.
  """

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.records = list(self._read_and_repair())
    self._f = open(path, "a")

  def _read_and_repair(self) -> Iterator[dict]:
    if not os.path.exists(self.path):
      return
    good = 0
    with open(self.path, "rb") as f:
      for line in f:
        if not line.endswith(b"\n"):
          break
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          break
        good += len(line)
        yield rec
    if good != os.path.getsize(self.path):
      with open(self.path, "r+b") as f:
        f.truncate(good)

  def append(self, record: dict) -> None:
    self._f.write(json.dumps(record, sort_keys=True) + "\n")
    self._f.flush()
    os.fsync(self._f.fileno())
    self.records.append(record)

  def extend(self, records: Iterable[dict]) -> None:
    for r in records:
      self.append(r)

  def close(self) -> None:
    self._f.close()

  def __enter__(self) -> "JsonlLog":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
