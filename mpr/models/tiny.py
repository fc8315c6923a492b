"""The embedded default model: a tiny Qwen3-architecture policy with an ALFWorld BPE tokenizer.

  tok = tiny.tokenizer()                       # mpr/assets/tiny/tokenizer.json (shipped)
  cfg = tiny.model_config(tok)                 # mpr.models.config.tiny sized to that vocabulary
  params = tiny.init_params(cfg, seed=0)       # random init (training: the behaviour-cloning stage)

The tokenizer is made by `experiments/configs/tokenizer_tiny.py` (see its docstring).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp

from mpr.errors import UserError
from mpr.models import config as config_lib
from mpr.models.decoder import Decoder, init_cache
from mpr.models.tokenizer import Tokenizer

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tiny")


def tokenizer(folder: str = ASSETS) -> Tokenizer:
  return Tokenizer.from_hf_dir(folder)


def model_config(tok: Tokenizer, **overrides) -> config_lib.ModelConfig:
  unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config_lib.ModelConfig)} - {"vocab_size"})
  if unknown or "vocab_size" in overrides:
    raise UserError(f"unknown or fixed model fields {unknown or ['vocab_size']}: the tiny model takes "
                    "ModelConfig fields (num_layers, hidden_size, ...) and its tokenizer's vocabulary")
  return config_lib.tiny(vocab_size=tok.vocab_size, **overrides)


def init_params(cfg: config_lib.ModelConfig, seed: int = 0) -> dict:
  tokens = jnp.zeros((1, 1), jnp.int32)
  variables = Decoder(cfg).init(jax.random.key(seed), tokens, jnp.ones((1,), jnp.int32),
                                init_cache(cfg, 1, 1, jnp.float32))
  return variables["params"]
