"""Orbax checkpoints of models: float params, or a frozen low-bit variant, plus what describes them.

  save_model(dir, cfg, params)            → dir/{model.json, params/}
  cfg, params = load_model(dir)
  save_variant(dir, variant)              → dir/{model.json, variables/}   (only what serving reads)
  variant = load_variant(dir)

Every load checks the stored tree against what the config implies before reading a byte of data,
so a missing, corrupt or mismatched checkpoint fails with one line naming the first bad tensor.
model.json carries the SHA-256 of every file orbax wrote, which every load checks before orbax reads
a byte: flipped bits that leave the files readable are refused, not served, and damaged files never
reach orbax (whose background threads print tracebacks on unreadable data). Loaded tensors must be
finite. Saves go to a temporary sibling folder renamed into place, so a kill never leaves half a
checkpoint.

model.json's "layout" is "stacked" (per-layer tensors under "layers" on a leading axis, as the
scanned Decoder reads them). Float checkpoints without it, from before the scan, load too.
"""
from __future__ import annotations

import dataclasses
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

LAYOUT = "stacked"


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


def _nonfinite(tree: Any) -> Optional[str]:
  """The first float tensor holding NaN or inf, by name."""
  for key, leaf in sorted(_flat(tree).items()):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a.astype(np.float32)).all():
      return key
  return None


def _file_hashes(root: str, name: str) -> dict[str, str]:
  """{"params/d/…": SHA-256} for every file under root/name."""
  out = {}
  for d, _, files in os.walk(os.path.join(root, name)):
    for f in files:
      full = os.path.join(d, f)
      out[os.path.relpath(full, root)] = io.file_digest(full)
  return dict(sorted(out.items()))


def _save(path: str, meta: dict, name: str, tree: Any) -> None:
  path = os.path.abspath(path)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with _checkpointer() as ckptr:
    ckptr.save(os.path.join(tmp, name), _flat(tree))
    ckptr.wait_until_finished()
  io.atomic_write_json(os.path.join(tmp, "model.json"), {**meta, "files_sha256": _file_hashes(tmp, name)})
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


def _check_files(path: str, meta: dict, name: str) -> None:
  """Every file model.json lists under `name` is present with its recorded SHA-256."""
  want = {k: v for k, v in (meta.get("files_sha256") or {}).items() if k.startswith(name + "/")}
  if not want:
    raise UserError(f"{path}: model.json lists no file hashes for {name}/, so its tensors cannot be "
                    "verified (re-save it with this version of mpr)")
  for rel, digest in want.items():
    full = os.path.join(path, rel)
    if not os.path.isfile(full):
      raise UserError(f"{path}: corrupt checkpoint, {rel} is missing")
    if io.file_digest(full) != digest:
      raise UserError(f"{path}: corrupt checkpoint, {rel} does not match its SHA-256 in model.json "
                      "(a damaged or altered file)")


def _finite(path: str, tree: Any) -> Any:
  bad = _nonfinite(tree)
  if bad is not None:
    raise UserError(f"{path}: tensor {bad} holds NaN or infinite values")
  return tree


def _restore(path: str, meta: dict, name: str, expected: Any) -> Any:
  """Restores `name` under path after checking its files' hashes, and its tensor names, shapes and
  dtypes against `expected`; the result must be finite."""
  where = os.path.join(os.path.abspath(path), name)
  if not os.path.isdir(where):
    raise UserError(f"{path}: not a checkpoint (no {name}/ folder)")
  _check_files(path, meta, name)
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
  return _finite(path, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(expected), leaves))


def _read_meta(path: str) -> dict:
  meta_file = os.path.join(path, "model.json")
  if not os.path.isfile(meta_file):
    raise UserError(f"{path}: not an mpr model checkpoint (no model.json)")
  return io.read_json_object(meta_file)


def save_model(path: str, cfg: ModelConfig, params: dict, extra: dict | None = None,
               param_dtype: str = "float32") -> None:
  """Float params, stored as `param_dtype` (bfloat16 halves a shipped checkpoint); loads as f32."""
  stored = jax.tree.map(lambda x: np.asarray(x, np.dtype(jnp.dtype(param_dtype))), params)
  _save(path, {"kind": "float", "config": config_to_json(cfg), "param_dtype": param_dtype, "layout": LAYOUT,
               **(extra or {})}, "params", stored)


def load_model(path: str) -> tuple[ModelConfig, dict]:
  """Float params as f32; a checkpoint in the per-layer layout of older versions is stacked on load."""
  meta = _read_meta(path)
  if meta.get("kind") != "float":
    raise UserError(f"{path}: holds a {meta.get('kind')!r} checkpoint, expected float params")
  cfg = config_from_json(meta["config"])
  dtype = jnp.dtype(meta.get("param_dtype", "float32"))
  if meta.get("layout", LAYOUT) != LAYOUT:
    raise UserError(f"{path}: unknown parameter layout {meta['layout']!r} in model.json (expected {LAYOUT!r})")
  stacked = "layout" in meta
  shapes = params_lib.expected_shapes(cfg) if stacked else params_lib.legacy_shapes(cfg)
  expected = params_lib.unflatten({p: jax.ShapeDtypeStruct(s, dtype) for p, s in shapes.items()})
  stored = _restore(path, meta, "params", expected)
  if not stacked:
    stored = params_lib.stack_layers(stored, cfg.num_layers)
  return cfg, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stored)


def save_variant(path: str, variant) -> None:
  """Writes what serving reads, gathered to host numpy (orbax writes host-local arrays from one host)."""
  meta = {"kind": "variant", "config": config_to_json(variant.cfg), "precision": dataclasses.asdict(variant.prec),
          "layout": LAYOUT, **({"packed_for": variant.packed_for} if variant.prec.kernel == "pallas" else {})}
  _save(path, meta, "variables", jax.device_get(variant.variables))


def load_variant(path: str, mesh=None):
  """A frozen variant; with a `mesh` (mpr.models.sharding) restored straight into its split layout."""
  from mpr.models.variants import Variant, abstract_variables
  meta = _read_meta(path)
  if meta.get("kind") != "variant":
    raise UserError(f"{path}: holds a {meta.get('kind')!r} checkpoint, expected a frozen variant")
  cfg = config_from_json(meta["config"])
  try:
    prec = Precision(**meta["precision"])
  except TypeError as e:
    raise UserError(f"{path}: model.json has an unreadable precision ({e})") from None
  if meta.get("quant_head"):   # written before the head's quantization was part of the precision
    raise UserError(f"{path}: frozen with the retired quant_head flag; freeze it again as {prec.name}-head")
  if precision(prec.name) != prec:   # validates the name, and that the fields are the name's
    raise UserError(f"{path}: precision fields do not match its name {prec.name!r}")
  if meta.get("layout") != LAYOUT:
    raise UserError(f"{path}: a variant frozen in the per-layer layout of an older mpr; convert it again "
                    "(delete it and rerun the convert stage)")
  model = 1 if mesh is None else mesh.shape["model"]
  if prec.kernel == "pallas" and prec.weight_bits <= 4 and meta.get("packed_for", 1) != model:   # int8 does not pair rows
    raise UserError(f"{path}: {prec.name} was packed for a model axis of {meta.get('packed_for', 1)}, this run's "
                    f"is {model}; convert it again (delete it and rerun the convert stage)")
  abstract = abstract_variables(cfg, prec, model)      # what serving reads, as shapes only
  if mesh is not None:
    from mpr.models import sharding
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            abstract, sharding.shardings(mesh, abstract))
  return Variant.serve(cfg, prec, _restore(path, meta, "variables", abstract), mesh)
