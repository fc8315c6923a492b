"""Hugging Face checkpoint directories: config.json + *.safetensors (single or sharded).

  cfg, params = load_hf("/path/to/Qwen3-8B")

Reads tensors with `safetensors.numpy` (no torch). Qwen3, Qwen2 and Llama share one key table;
the per-family differences are whether q_norm/k_norm (Qwen3) and q/k/v biases (Qwen2) exist, both
read from the config.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Optional

import numpy as np

from mpr import io
from mpr.errors import UserError
from mpr.models import params as params_lib
from mpr.models.config import ModelConfig, from_hf


def key_table(cfg: ModelConfig) -> Iterator[params_lib.Row]:
  t, i_ = params_lib.transpose, params_lib.identity
  yield ("embed", "embedding"), None, "model.embed_tokens.weight", i_
  yield ("final_norm", "scale"), None, "model.norm.weight", i_
  if not cfg.tie_embeddings:
    yield ("lm_head", "proj", "kernel"), None, "lm_head.weight", t
  p = params_lib.LAYERS
  for i in range(cfg.num_layers):
    hf = f"model.layers.{i}"
    yield (p, "attn_norm", "scale"), i, f"{hf}.input_layernorm.weight", i_
    yield (p, "mlp_norm", "scale"), i, f"{hf}.post_attention_layernorm.weight", i_
    for proj in "qkvo":
      yield (p, "attn", proj, "proj", "kernel"), i, f"{hf}.self_attn.{proj}_proj.weight", t
    for proj in ("gate", "up", "down"):
      yield (p, "mlp", proj, "proj", "kernel"), i, f"{hf}.mlp.{proj}_proj.weight", t
    if cfg.qk_norm:
      yield (p, "attn", "q_norm", "scale"), i, f"{hf}.self_attn.q_norm.weight", i_
      yield (p, "attn", "k_norm", "scale"), i, f"{hf}.self_attn.k_norm.weight", i_
    if cfg.qkv_bias:
      for proj in "qkv":
        yield (p, "attn", proj, "proj", "bias"), i, f"{hf}.self_attn.{proj}_proj.bias", i_


def _shard_files(path: str) -> list[str]:
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      names = sorted(set(json.load(f)["weight_map"].values()))
    return [os.path.join(path, n) for n in names]
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(single):
    return [single]
  raise UserError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_config(path: str, max_seq_len: Optional[int] = None) -> ModelConfig:
  cfg_file = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_file):
    raise UserError(f"{path}: not a Hugging Face checkpoint directory (no config.json)")
  hf = io.read_json_object(cfg_file)
  try:
    return from_hf(hf, max_seq_len)
  except KeyError as e:
    raise UserError(f"{cfg_file}: missing key {e}") from None
  except (TypeError, ValueError) as e:   # a value of the wrong type: "hidden_size": "big", null, [64]
    raise UserError(f"{cfg_file}: bad value ({e})") from None


def load_hf(path: str, max_seq_len: Optional[int] = None) -> tuple[ModelConfig, dict]:
  from safetensors import SafetensorError
  from safetensors.numpy import safe_open

  cfg = read_config(path, max_seq_len)
  handles = {}
  for file in _shard_files(path):
    if not os.path.exists(file):
      raise UserError(f"{path}: shard {os.path.basename(file)} listed in the index is missing")
    try:
      handles[file] = safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as e:
      raise UserError(f"{file}: unreadable safetensors file ({e})") from None
  where = {name: h for h in handles.values() for name in h.keys()}

  def get(name: str) -> Optional[np.ndarray]:
    h = where.get(name)
    return None if h is None else h.get_tensor(name)

  return cfg, params_lib.fill(cfg, key_table(cfg), get, source=path)
