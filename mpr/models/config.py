"""Decoder architecture as a frozen dataclass: one config covers the Qwen3, Qwen2 and Llama families.

The differences between the families live here, not in branches of the model code:
  Qwen3 – per-head RMSNorm on q and k before RoPE (`qk_norm`), explicit head_dim, tied head in
          the small sizes.
  Qwen2 – Qwen2 / Qwen2.5: biases on the q, k and v projections (`qkv_bias`), tied head in the
          small sizes.
  Llama – Llama-3.x `llama3` RoPE frequency scaling (DeepSeek-R1-Distill-Llama-8B), SmolLM2.
`from_hf` reads a Hugging Face `config.json` and refuses what the decoder does not implement
(sliding-window attention, other RoPE types, o_proj and MLP biases, other activations) rather than
running a silently different model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from mpr.errors import UserError


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 RoPE frequency scaling (transformers' `rope_type: llama3`)."""
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  qk_norm: bool                       # Qwen3: RMSNorm over head_dim on q and k, before RoPE
  tie_embeddings: bool                # logits = x @ embedding.T (no lm_head tensor)
  rope_theta: float = 10_000.0
  rope_scaling: Optional[RopeScaling] = None
  rms_norm_eps: float = 1e-6
  max_seq_len: int = 4096             # longest cache the model is used with
  family: str = "qwen3"               # informational: "qwen3" | "qwen2" | "llama"
  qkv_bias: bool = False              # Qwen2: q, k and v projections add a bias (o_proj never does)

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise UserError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

  @property
  def num_params(self) -> int:
    h, f, d = self.hidden_size, self.intermediate_size, self.head_dim
    attn = h * d * (2 * self.num_heads + 2 * self.num_kv_heads) + (2 * d if self.qk_norm else 0)
    attn += (self.num_heads + 2 * self.num_kv_heads) * d if self.qkv_bias else 0
    layer = attn + 3 * h * f + 2 * h
    head = 0 if self.tie_embeddings else self.vocab_size * h
    return self.num_layers * layer + self.vocab_size * h + h + head


# --- presets ----------------------------------------------------------------------------------
# Sizes of the paper's models (shapes only: weights come from the user's HF checkpoint).

def qwen3(size: str, **kw) -> ModelConfig:
  shapes = {  # hidden, intermediate, layers, heads, kv heads, tied
      "0.6b": (1024, 3072, 28, 16, 8, True),
      "1.7b": (2048, 6144, 28, 16, 8, True),
      "4b": (2560, 9728, 36, 32, 8, True),
      "8b": (4096, 12288, 36, 32, 8, False),
  }
  if size not in shapes:
    raise UserError(f"unknown Qwen3 size {size!r}; known: {sorted(shapes)}")
  h, f, n, nh, kv, tied = shapes[size]
  base = dict(vocab_size=151_936, hidden_size=h, intermediate_size=f, num_layers=n, num_heads=nh,
              num_kv_heads=kv, head_dim=128, qk_norm=True, tie_embeddings=tied, rope_theta=1e6,
              rms_norm_eps=1e-6, max_seq_len=40_960, family="qwen3")
  return ModelConfig(**{**base, **kw})


def llama3_8b(**kw) -> ModelConfig:
  """Llama-3.1-8B shapes, as used by DeepSeek-R1-Distill-Llama-8B."""
  base = dict(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336, num_layers=32,
              num_heads=32, num_kv_heads=8, head_dim=128, qk_norm=False, tie_embeddings=False,
              rope_theta=500_000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5,
              max_seq_len=131_072, family="llama")
  return ModelConfig(**{**base, **kw})


def smollm2_135m(**kw) -> ModelConfig:
  base = dict(vocab_size=49_152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
              num_kv_heads=3, head_dim=64, qk_norm=False, tie_embeddings=True, rope_theta=100_000.0,
              rms_norm_eps=1e-5, max_seq_len=8192, family="llama")
  return ModelConfig(**{**base, **kw})


def tiny(vocab_size: int = 2048, **kw) -> ModelConfig:
  """The embedded default policy's shape: Qwen3 architecture, a few million parameters."""
  base = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_layers=6, num_heads=4,
              num_kv_heads=2, head_dim=64, qk_norm=True, tie_embeddings=True, rope_theta=10_000.0,
              rms_norm_eps=1e-6, max_seq_len=2048, family="qwen3")
  return ModelConfig(**{**base, **kw})


# --- Hugging Face config.json ---------------------------------------------------------------------

# model_type -> the ModelConfig fields that tell the family apart.
_FAMILIES = {
    "qwen3": dict(qk_norm=True, qkv_bias=False),
    "qwen2": dict(qk_norm=False, qkv_bias=True),
    "llama": dict(qk_norm=False, qkv_bias=False),
}


def _rope(hf: dict[str, Any]) -> tuple[float, Optional[RopeScaling]]:
  # transformers >= 5 writes `rope_parameters`; 4.x checkpoints have `rope_theta` + `rope_scaling`.
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or {}
  theta = params.get("rope_theta", hf.get("rope_theta"))
  if theta is None:
    raise UserError("config.json has neither rope_parameters.rope_theta nor rope_theta")
  spec = {**scaling, **params}
  rope_type = spec.get("rope_type", spec.get("type", "default"))
  if rope_type == "default":
    return float(theta), None
  if rope_type == "llama3":
    return float(theta), RopeScaling(float(spec["factor"]), float(spec["low_freq_factor"]),
                                     float(spec["high_freq_factor"]),
                                     int(spec["original_max_position_embeddings"]))
  raise UserError(f"unsupported rope type {rope_type!r} (supported: default, llama3)")


def _refuse_unsupported(hf: dict[str, Any]) -> None:
  """Raises a one-line UserError for what the decoder would otherwise compute differently."""
  model_type = hf.get("model_type")
  if model_type not in _FAMILIES:
    raise UserError(f"unsupported architecture model_type={model_type!r} (supported: {sorted(_FAMILIES)})")
  # Qwen2/Qwen3 configs name a window size that use_sliding_window=false switches off; Llama's is live.
  if hf.get("use_sliding_window") or (model_type == "llama" and hf.get("sliding_window")):
    raise UserError("sliding-window attention is not implemented")
  if "sliding_attention" in (hf.get("layer_types") or ()):
    raise UserError("layer_types has sliding_attention layers: sliding-window attention is not implemented")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise UserError(f"{flag}=true is not implemented (the only projection biases are Qwen2's on q/k/v)")
  act = hf.get("hidden_act", "silu")
  if act != "silu":
    raise UserError(f"unsupported activation hidden_act={act!r} (SwiGLU with silu only)")


def from_hf(hf: dict[str, Any], max_seq_len: Optional[int] = None) -> ModelConfig:
  """ModelConfig from a Hugging Face config.json dict; refuses unsupported variants."""
  _refuse_unsupported(hf)
  model_type = hf["model_type"]
  theta, scaling = _rope(hf)
  heads = int(hf["num_attention_heads"])
  return ModelConfig(
      vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
      intermediate_size=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)), rope_theta=theta, rope_scaling=scaling,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      max_seq_len=int(max_seq_len or hf.get("max_position_embeddings", 4096)), family=model_type,
      **_FAMILIES[model_type])
