"""Orbax checkpoints of models: float params, or a frozen low-bit variant, plus what describes them.

  save_model(dir, cfg, params)            → dir/{model.json, params/}
  cfg, params = load_model(dir)
  save_variant(dir, variant)              → dir/{model.json, variables/}   (only what serving reads)
  variant = load_variant(dir)

Every load checks the stored tree against what the config implies before reading a byte of data,
so a missing, corrupt or mismatched checkpoint fails with one line naming the first bad tensor.
model.json carries a SHA-256 of the tensors' contents, which every load recomputes: flipped bits that
leave the files readable (and a model full of NaNs) are refused, not served. Loaded tensors must be
finite. Saves go to a temporary sibling folder renamed into place, so a kill never leaves half a
checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mpr import io
from mpr.errors import UserError
from mpr.models import params as params_lib
from mpr.models.config import ModelConfig, RopeScaling
from mpr.models.quant import Precision, precision


def config_to_json(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def config_from_json(d: dict) -> ModelConfig:
  d = dict(d)
  if d.get("rope_scaling"):
    d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
  try:
    return ModelConfig(**d)
  except TypeError as e:
    raise UserError(f"model.json does not describe a ModelConfig ({e})") from None


def _checkpointer():
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer()


def _scan(tree: Any) -> tuple[str, Optional[str]]:
  """(SHA-256 over every tensor's name, dtype, shape and bytes in name order, the first float tensor
  holding NaN or inf): one pass, so each tensor is copied to the host once."""
  h, nonfinite = hashlib.sha256(), None
  for key, leaf in sorted(_flat(tree).items()):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{key}|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())
    if nonfinite is None and np.issubdtype(a.dtype, np.floating) and not np.isfinite(a.astype(np.float32)).all():
      nonfinite = key
  return h.hexdigest(), nonfinite


def content_hash(tree: Any) -> str:
  return _scan(tree)[0]


def _save(path: str, meta: dict, name: str, tree: Any) -> None:
  path = os.path.abspath(path)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with _checkpointer() as ckptr:
    ckptr.save(os.path.join(tmp, name), _flat(tree))
    ckptr.wait_until_finished()
  io.atomic_write_json(os.path.join(tmp, "model.json"), {**meta, "content_sha256": content_hash(tree)})
  if os.path.exists(path):
    shutil.rmtree(path)
  os.replace(tmp, path)


def _key(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _flat(tree: Any) -> dict[str, Any]:
  """{"a/b/c": leaf}: frozen AQT trees hold QTensor dataclasses, which orbax cannot name; a flat
  dict of plain arrays stores any pytree, and the expected tree's structure rebuilds it."""
  return {_key(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _flat_meta(flat: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
  return {k: (tuple(v.shape), str(np.dtype(v.dtype))) for k, v in flat.items()}


def _verified(path: str, meta: dict, tree: Any) -> Any:
  """`tree` if its contents hash to what model.json recorded and every float tensor is finite."""
  want = meta.get("content_sha256")
  if want is None:
    raise UserError(f"{path}: model.json has no content_sha256, so its tensors cannot be verified "
                    "(re-save it with this version of mpr)")
  digest, nonfinite = _scan(tree)
  if digest != want:
    raise UserError(f"{path}: tensor contents do not match the hash in model.json (a damaged or altered checkpoint)")
  if nonfinite is not None:
    raise UserError(f"{path}: tensor {nonfinite} holds NaN or infinite values")
  return tree


def _restore(path: str, name: str, expected: Any) -> Any:
  """Restores `name` under path, checking tensor names, shapes and dtypes against `expected`."""
  where = os.path.join(os.path.abspath(path), name)
  if not os.path.isdir(where):
    raise UserError(f"{path}: not a checkpoint (no {name}/ folder)")
  # Closed on every path, so a failed restore leaves none of orbax's threads running.
  with _checkpointer() as ckptr:
    try:
      stored = _flat_meta(ckptr.metadata(where).item_metadata.tree)
    except Exception as e:  # orbax raises many types for unreadable metadata
      raise UserError(f"{path}: corrupt checkpoint, unreadable metadata ({type(e).__name__})") from None
    want = _flat_meta(_flat(expected))
    for key, (shape, dtype) in want.items():
      if key not in stored:
        raise UserError(f"{path}: checkpoint lacks tensor {key}")
      if stored[key] != (shape, dtype):
        raise UserError(f"{path}: tensor {key} is {stored[key][1]}{list(stored[key][0])}, "
                        f"expected {dtype}{list(shape)}")
    extra = sorted(set(stored) - set(want))
    if extra:
      raise UserError(f"{path}: checkpoint has unexpected tensor {extra[0]} (a different model?)")
    try:
      flat = ckptr.restore(where, _flat(expected))
    except Exception as e:
      raise UserError(f"{path}: corrupt checkpoint data ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
  leaves = [flat[k] for k in _flat(expected)]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), leaves)


def _read_meta(path: str) -> dict:
  meta_file = os.path.join(path, "model.json")
  if not os.path.isfile(meta_file):
    raise UserError(f"{path}: not an mpr model checkpoint (no model.json)")
  try:
    return io.read_json(meta_file)
  except json.JSONDecodeError:
    raise UserError(f"{meta_file}: corrupt JSON") from None


def save_model(path: str, cfg: ModelConfig, params: dict, extra: dict | None = None,
               param_dtype: str = "float32") -> None:
  """Float params, stored as `param_dtype` (bfloat16 halves a shipped checkpoint); loads as f32."""
  stored = jax.tree.map(lambda x: np.asarray(x, np.dtype(jnp.dtype(param_dtype))), params)
  _save(path, {"kind": "float", "config": config_to_json(cfg), "param_dtype": param_dtype, **(extra or {})},
        "params", stored)


def load_model(path: str) -> tuple[ModelConfig, dict]:
  meta = _read_meta(path)
  if meta.get("kind") != "float":
    raise UserError(f"{path}: holds a {meta.get('kind')!r} checkpoint, expected float params")
  cfg = config_from_json(meta["config"])
  dtype = jnp.dtype(meta.get("param_dtype", "float32"))
  expected = params_lib.unflatten({p: jax.ShapeDtypeStruct(s, dtype)
                                   for p, s in params_lib.expected_shapes(cfg).items()})
  stored = _verified(path, meta, _restore(path, "params", expected))
  return cfg, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stored)


def save_variant(path: str, variant) -> None:
  meta = {"kind": "variant", "config": config_to_json(variant.cfg),
          "precision": dataclasses.asdict(variant.prec), "quant_head": variant.model.quant_head}
  _save(path, meta, "variables", variant.variables)


def load_variant(path: str):
  from mpr.models.variants import Variant, make_variant
  meta = _read_meta(path)
  if meta.get("kind") != "variant":
    raise UserError(f"{path}: holds a {meta.get('kind')!r} checkpoint, expected a frozen variant")
  cfg = config_from_json(meta["config"])
  prec = Precision(**meta["precision"])
  precision(prec.name)  # validates the name
  # The expected tree: what make_variant would build, as shapes only (no float weights needed).
  shapes = params_lib.unflatten({p: jax.ShapeDtypeStruct(s, np.float32)
                                 for p, s in params_lib.expected_shapes(cfg).items()})
  abstract = jax.eval_shape(lambda p: make_variant(cfg, p, prec, meta["quant_head"]).variables, shapes)
  return Variant.serve(cfg, prec, _verified(path, meta, _restore(path, "variables", abstract)), meta["quant_head"])
