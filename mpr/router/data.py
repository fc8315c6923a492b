"""The step table the router trains on, and the history windows it reads.

  table = StepTable(z, d, offsets, low_entropy, low_margin, games, won)
  save(path, table); table = load(path)            # one .npz, written atomically
  zw, mask = windows(table.z, table.offsets, rows, max_len)

Axes: N steps (all episodes, concatenated), E episodes, D embedding width, B rows asked for,
L = max_len history slots. Episode e owns rows offsets[e]:offsets[e+1], in step order.

A window is the history z_1..z_t of the episode up to and including step t, cut to its most recent
L steps and RIGHT-aligned: padding sits at the left, so the current step is always slot L-1 and one
fixed shape serves every row.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Optional, Sequence

import numpy as np

from mpr import io
from mpr.errors import UserError

_STEP_FIELDS = ("z", "d", "low_entropy", "low_margin")
_ARRAYS = ("z", "d", "offsets", "low_entropy", "low_margin", "games", "won")


@dataclasses.dataclass
class StepTable:
  z: np.ndarray             # float32 [N, D]: frozen per-step embeddings
  d: np.ndarray             # float32 [N]: KL(high || low) at the step; NaN where unknown
  offsets: np.ndarray       # int64 [E+1]: episode e is rows offsets[e]:offsets[e+1]
  low_entropy: np.ndarray   # float32 [N]: the low tier's entropy over actions (heuristic baseline)
  low_margin: np.ndarray    # float32 [N]: the low tier's top-2 probability margin (heuristic baseline)
  games: list[str]          # [E]: the game each episode played
  won: np.ndarray           # bool [E]

  @property
  def num_steps(self) -> int:
    return int(self.z.shape[0])

  @property
  def num_episodes(self) -> int:
    return len(self.offsets) - 1


def validate(table: StepTable, embed_dim: Optional[int] = None) -> None:
  """Raises UserError unless the table is non-empty and its shapes agree (with `embed_dim` if given)."""
  if table.z.ndim != 2 or table.z.shape[0] == 0:
    raise UserError(f"empty step table (z has shape {list(table.z.shape)}, expected [N>0, D])")
  n = table.z.shape[0]
  for name in _STEP_FIELDS[1:]:
    if getattr(table, name).shape != (n,):
      raise UserError(f"step table: {name} has shape {list(getattr(table, name).shape)}, expected [{n}]")
  off = table.offsets
  if off.ndim != 1 or len(off) < 2 or off[0] != 0 or off[-1] != n or np.any(np.diff(off) <= 0):
    raise UserError(f"step table: offsets must increase strictly from 0 to {n} (the step count)")
  e = len(off) - 1
  if len(table.games) != e or table.won.shape != (e,):
    raise UserError(f"step table: {e} episodes but {len(table.games)} games and {table.won.shape[0]} won flags")
  if embed_dim is not None and table.z.shape[1] != embed_dim:
    raise UserError(f"step input width {table.z.shape[1]} does not match the router's {embed_dim} "
                    f"(another embedding model, or other router.inputs?)")


def concat(tables: Sequence[StepTable]) -> StepTable:
  """One table holding every episode of `tables`, in order."""
  if not tables:
    raise UserError("no step tables to concatenate")
  widths = sorted({t.z.shape[1] for t in tables})
  if len(widths) > 1:
    raise UserError(f"step tables have different embedding widths {widths}")
  starts = np.cumsum([0] + [t.num_steps for t in tables[:-1]])
  offsets = np.concatenate([[0]] + [t.offsets[1:] + s for t, s in zip(tables, starts)]).astype(np.int64)
  return StepTable(
      z=np.concatenate([t.z for t in tables]), d=np.concatenate([t.d for t in tables]), offsets=offsets,
      low_entropy=np.concatenate([t.low_entropy for t in tables]),
      low_margin=np.concatenate([t.low_margin for t in tables]),
      games=[g for t in tables for g in t.games], won=np.concatenate([t.won for t in tables]))


def save(path: str, table: StepTable) -> None:
  """Writes one .npz; a kill leaves either the old file or the new one."""
  validate(table)
  with io.atomic_open(path, "wb") as f:
    np.savez(f, z=table.z.astype(np.float32), d=table.d.astype(np.float32),
             offsets=table.offsets.astype(np.int64), low_entropy=table.low_entropy.astype(np.float32),
             low_margin=table.low_margin.astype(np.float32), games=np.asarray(table.games, dtype=str),
             won=table.won.astype(bool))


def load(path: str) -> StepTable:
  if not os.path.isfile(path):
    raise UserError(f"{path}: no step table there")
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in _ARRAYS if k not in f.files]
      if missing:
        raise UserError(f"{path}: not a step table (lacks {missing[0]})")
      a = {k: f[k] for k in _ARRAYS}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path}: corrupt step table ({type(e).__name__})") from None
  table = StepTable(z=a["z"].astype(np.float32), d=a["d"].astype(np.float32),
                    offsets=a["offsets"].astype(np.int64), low_entropy=a["low_entropy"].astype(np.float32),
                    low_margin=a["low_margin"].astype(np.float32), games=[str(g) for g in a["games"]],
                    won=a["won"].astype(bool))
  try:
    validate(table)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None
  return table


def step_index(offsets: np.ndarray) -> np.ndarray:
  """int [N]: each step's index within its episode (episode e is rows offsets[e]:offsets[e+1])."""
  offsets = np.asarray(offsets)
  return np.arange(offsets[-1]) - np.repeat(offsets[:-1], np.diff(offsets))


def windows(z: np.ndarray, offsets: np.ndarray, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(zw float32 [B, max_len, D], mask bool [B, max_len]): each row's right-aligned history window.

  Slot j of row b holds step rows[b] - (max_len - 1) + j when that step belongs to the same episode;
  earlier slots are padding (zeros, mask False), so windows never reach into the previous episode.
  """
  rows = np.asarray(rows, np.int64)
  start = offsets[np.searchsorted(offsets, rows, side="right") - 1]           # [B] first row of the episode
  idx = rows[:, None] - (max_len - 1) + np.arange(max_len, dtype=np.int64)    # [B, L]
  mask = idx >= start[:, None]
  zw = z[np.maximum(idx, start[:, None])]       # clamped in-episode gather; padded slots zeroed below
  zw[~mask] = 0.0
  return zw.astype(np.float32, copy=False), mask


def fixed_batches(table: StepTable, rows: np.ndarray, max_len: int, batch_size: int):
  """Yields (n, idx, zw, mask) over `rows` in order: windows of batch_size rows, the last one padded by
  repeating its final row (one compiled shape); the first n are real and idx indexes into `rows`."""
  for lo in range(0, len(rows), batch_size):
    n = min(batch_size, len(rows) - lo)
    idx = np.pad(np.arange(lo, lo + n), (0, batch_size - n), mode="edge")
    yield (n, idx, *windows(table.z, table.offsets, rows[idx], max_len))
