"""Atomic, resumable file output.

Everything a stage produces is written so that a kill at any instant leaves either the old file
or the new one (write to a temp file in the same directory, fsync, rename), and append-only JSONL
logs are read back tolerating a torn last line. This is what makes every stage resumable. A bad
line before the last is not what a kill leaves: it is an error naming file and line, never cut away.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import IO, Any, Iterable, Iterator

from mpr.errors import UserError


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[IO]:
  """A new file that replaces `path` only once the block completes (fsynced, then renamed)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp.")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def file_digest(path: str, edge: int = 0) -> str:
  """SHA-256 of a file's bytes; with `edge` > 0, of its size and first and last `edge` bytes only
  (weights of many GB: a retrained or swapped checkpoint differs there, and hashing stays instant)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    if edge <= 0:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    else:
      size = os.fstat(f.fileno()).st_size
      h.update(f"{size}|".encode())
      h.update(f.read(edge))
      f.seek(max(0, size - edge))
      h.update(f.read(edge))
  return h.hexdigest()


def atomic_write_text(path: str, text: str) -> None:
  with atomic_open(path) as f:
    f.write(text)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_json_object(path: str, label: str | None = None) -> dict:
  """A file the user hands over that must hold one JSON object: anything else is a one-line UserError.

  Errors start with `label` (default: the path), so a caller can say what the file was meant to be.
  """
  label = label or path
  try:
    obj = read_json(path)
  except OSError as e:
    raise UserError(f"{label}: {e.strerror}") from None
  except ValueError as e:        # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
    raise UserError(f"{label}: invalid JSON ({e})") from None
  if not isinstance(obj, dict):
    raise UserError(f"{label}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _record(line: bytes) -> dict | None:
  """The record on one line, or None for a line that is unterminated or not a JSON object."""
  if not line.endswith(b"\n"):
    return None
  try:
    rec = json.loads(line)
  except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
    return None
  return rec if isinstance(rec, dict) else None


def _complete_lines(path: str) -> Iterator[tuple[int, dict]]:
  """(end offset, record) for every complete line, stopping at a torn last line.

  A kill mid-append can only damage the last line; a bad line with more after it means the file was
  damaged otherwise, and cutting it there would silently drop the good records after it.
  """
  end, bad = 0, None
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, 1):
      if bad is not None:
        raise UserError(f"{path}:{bad}: corrupt line (not a JSON record) before the end of the log; "
                        "repair or delete that line")
      rec = _record(line)
      if rec is None:
        bad = lineno
        continue
      end += len(line)
      yield end, rec


def read_jsonl(path: str) -> list[dict]:
  """The complete records of a JSONL log, read-only (a torn last line is skipped, not repaired)."""
  return [rec for _, rec in _complete_lines(path)]


class JsonlLog:
  """Append-only JSONL file: each record is flushed and fsynced before `append` returns.

  On open, a torn final line (the process was killed mid-write) is truncated away, so the
  records read back are exactly those whose `append` completed; a bad line before it raises UserError
  and leaves the file as it is.
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
    for good, rec in _complete_lines(self.path):
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
