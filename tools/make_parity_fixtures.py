"""Generate tiny Hugging Face checkpoints and their torch reference outputs.

CI has neither torch nor network access, so the Flax-vs-HF parity tests for
the Qwen3, Qwen2 and Llama decoders read committed fixtures instead: tiny
random-weight checkpoints in the exact on-disk HF layout plus the outputs HF
computes from them. This script is how those fixtures were made; it is not run
in CI.

It needs torch and transformers, which live in a separate venv so they never
leak into the main one:

  python3 -m venv .venv-ref && \\
    .venv-ref/bin/pip install torch==2.13.0 transformers==5.24.0 \\
    safetensors numpy
  .venv-ref/bin/python tools/make_parity_fixtures.py [NAME ...]

Output: tests/fixtures/{qwen3_tied,qwen3_untied,llama3_scaled,qwen2_tied,
qwen2_untied}/ (or only the NAMEs given) with config.json,
generation_config.json, model.safetensors (all from save_pretrained) and
ref.npz. See tests/fixtures/README.md.
"""

import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import load_file
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
SEED = 0
BATCH, SEQ, PAD = 2, 12, 4
NEW_TOKENS = 8
PAD_ID = 0
# Logits of valid positions must not depend on padding; anything looser than
# this would mean the reference itself is suspect.
PAD_TOL = 1e-4

_QWEN3_COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
    max_position_embeddings=512, initializer_range=0.1,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6})
# Qwen2 has no head_dim setting: it is hidden / heads = 16, as in qwen3_tied.
_QWEN2_COMMON = {**_QWEN3_COMMON, "use_sliding_window": False,
                 "max_window_layers": 28}


def _specs():
  """(name, model class, config, config.json rewrites applied after saving)."""
  return [
      ("qwen3_tied", Qwen3ForCausalLM,
       Qwen3Config(**_QWEN3_COMMON, head_dim=16, tie_word_embeddings=True),
       ()),
      # head_dim 32 != hidden/heads = 16, so a loader that derives head_dim
      # instead of reading it fails here.
      ("qwen3_untied", Qwen3ForCausalLM,
       Qwen3Config(**_QWEN3_COMMON, head_dim=32, tie_word_embeddings=False),
       (_to_4x_rope_style,)),
      ("llama3_scaled", LlamaForCausalLM,
       LlamaConfig(
           vocab_size=256, hidden_size=64, intermediate_size=160,
           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           tie_word_embeddings=False, max_position_embeddings=512,
           rms_norm_eps=1e-5, initializer_range=0.1, attention_bias=False,
           mlp_bias=False,
           # original_max_position_embeddings=64 puts head_dim 16's
           # wavelengths (6.3 .. ~1e5) in all three llama3 regimes: kept,
           # smoothed and divided by factor.
           rope_parameters={
               "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}),
       ()),
      ("qwen2_tied", Qwen2ForCausalLM,
       Qwen2Config(**_QWEN2_COMMON, tie_word_embeddings=True), ()),
      # Saved as Qwen2.5 hub checkpoints are: 4.x rope keys, a sliding_window
      # size that use_sliding_window=false switches off, no layer_types.
      ("qwen2_untied", Qwen2ForCausalLM,
       Qwen2Config(**_QWEN2_COMMON, tie_word_embeddings=False),
       (_to_4x_rope_style, _to_hub_qwen2_style)),
  ]


def _perturb(model):
  # HF initialises RMSNorm weights to exactly 1 and biases to exactly 0, which
  # would hide a port that forgets a norm weight, applies a (1+w) offset or
  # drops the q/k/v biases.
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.copy_(1.0 + 0.2 * torch.randn_like(param))
      elif name.endswith(".bias"):
        param.copy_(0.1 * torch.randn_like(param))


def _to_4x_rope_style(config_path):
  # Hub checkpoints saved by transformers 4.x carry a top-level rope_theta and
  # no rope_parameters; the loader must accept both styles.
  cfg = json.loads(config_path.read_text())
  rope = cfg.pop("rope_parameters")
  assert rope["rope_type"] == "default", rope
  cfg["rope_theta"] = rope["rope_theta"]
  cfg["rope_scaling"] = None
  config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _to_hub_qwen2_style(config_path):
  # Qwen2.5 hub configs (transformers 4.x) name a window size even though
  # use_sliding_window is false, and have no layer_types; transformers 5 reads
  # them back as all full attention, and so must the loader.
  cfg = json.loads(config_path.read_text())
  assert set(cfg.pop("layer_types")) == {"full_attention"}, cfg
  assert not cfg["use_sliding_window"] and cfg["sliding_window"] is None, cfg
  cfg["sliding_window"] = 4096
  config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _left_pad_position_ids(mask):
  return (mask.cumsum(-1) - 1).clamp(min=0)


def _forward(model, input_ids, attention_mask=None, position_ids=None):
  with torch.no_grad():
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids, output_hidden_states=True)


def _final_norm_output(model, input_ids):
  captured = []
  hook = model.model.norm.register_forward_hook(
      lambda _m, _i, out: captured.append(out))
  try:
    out = _forward(model, input_ids)
  finally:
    hook.remove()
  # Documented in the README: HF's last hidden_states entry is post-norm.
  assert torch.equal(out.hidden_states[-1], captured[0])
  return captured[0]


def _reference(model, input_ids):
  ones = torch.ones_like(input_ids)
  logits = _forward(model, input_ids, ones).logits

  pad_ids, pad_mask = input_ids.clone(), ones.clone()
  pad_ids[1, -PAD:], pad_mask[1, -PAD:] = PAD_ID, 0
  pad_logits = _forward(model, pad_ids, pad_mask).logits
  assert torch.allclose(pad_logits[1, :-PAD], logits[1, :-PAD], atol=PAD_TOL)

  lpad_ids, lpad_mask = torch.full_like(input_ids, PAD_ID), ones.clone()
  lpad_ids[0] = input_ids[0]
  lpad_ids[1, PAD:] = input_ids[1, :-PAD]
  lpad_mask[1, :PAD] = 0
  lpad_pos = _left_pad_position_ids(lpad_mask)
  lpad_logits = _forward(model, lpad_ids, lpad_mask, lpad_pos).logits
  assert torch.allclose(lpad_logits[1, PAD:], logits[1, :-PAD], atol=PAD_TOL)

  with torch.no_grad():
    generated = model.generate(input_ids[:1], max_new_tokens=NEW_TOKENS,
                               do_sample=False)
  greedy = generated[:, SEQ:]
  # An EOS among the new tokens would end generation early and leave a
  # shorter, harder-to-compare continuation.
  assert greedy.shape == (1, NEW_TOKENS), greedy.shape

  f32 = lambda t: t.detach().numpy().astype(np.float32)
  i32 = lambda t: t.detach().numpy().astype(np.int32)
  return {
      "input_ids": i32(input_ids), "logits": f32(logits),
      "pad_input_ids": i32(pad_ids), "pad_attention_mask": i32(pad_mask),
      "pad_logits": f32(pad_logits),
      "lpad_input_ids": i32(lpad_ids), "lpad_attention_mask": i32(lpad_mask),
      "lpad_position_ids": i32(lpad_pos), "lpad_logits": f32(lpad_logits),
      "hidden_last": f32(_final_norm_output(model, input_ids)),
      "greedy_ids": i32(greedy),
  }


def _inv_freqs(model):
  """Scaled inv_freq as the model uses it, and the unscaled default."""
  config = model.config
  scaled = model.model.rotary_emb.inv_freq
  theta = config.rope_parameters["rope_theta"]
  # Qwen2 configs have no head_dim; its attention uses hidden / heads.
  dim = (getattr(config, "head_dim", None)
         or config.hidden_size // config.num_attention_heads)
  unscaled = 1.0 / theta**(torch.arange(0, dim, 2, dtype=torch.float) / dim)
  rope_type = config.rope_parameters["rope_type"]
  if rope_type != "default":
    recomputed, _ = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    assert torch.equal(recomputed, scaled)
  return scaled, unscaled


def _describe(name, out_dir, model):
  cfg = json.loads((out_dir / "config.json").read_text())
  print(f"== {name}")
  print("  config rope keys:", {k: v for k, v in cfg.items() if "rope" in k})
  tensors = load_file(out_dir / "model.safetensors")
  print(f"  {len(tensors)} tensors")
  for key in sorted(tensors):
    if ".layers." not in key or ".layers.0." in key:
      print(f"  {key} {list(tensors[key].shape)} {tensors[key].dtype}")
  scaled, unscaled = _inv_freqs(model)
  if not torch.equal(scaled, unscaled):
    # repr of float32 values round-trips, so these can be pasted into tests.
    print("  inv_freq scaled:  ", [float(v) for v in scaled])
    print("  inv_freq unscaled:", [float(v) for v in unscaled])
  size = sum(p.stat().st_size for p in out_dir.iterdir())
  print(f"  files: {sorted(p.name for p in out_dir.iterdir())}, {size} bytes")


def main(names):
  print(f"torch {torch.__version__}, transformers {transformers.__version__}")
  specs = _specs()
  known = [spec[0] for spec in specs]
  if set(names) - set(known):
    sys.exit(f"unknown fixtures {sorted(set(names) - set(known))}; known: {known}")
  for name, cls, config, rewrites in specs:
    if names and name not in names:
      continue
    torch.manual_seed(SEED)
    built = cls(config).to(torch.float32)
    _perturb(built)
    out_dir = FIXTURES / name
    out_dir.mkdir(parents=True, exist_ok=True)
    built.save_pretrained(out_dir, safe_serialization=True)
    for rewrite in rewrites:
      rewrite(out_dir / "config.json")

    # References come from the reloaded checkpoint, so they describe exactly
    # what is on disk (including the rewritten 4.x-style config).
    model = cls.from_pretrained(out_dir, dtype=torch.float32,
                                attn_implementation="eager").eval()
    want, got = built.state_dict(), model.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # Guards the 4.x rewrite: a dropped rope_theta would silently fall back
    # to the default theta and the references would describe the wrong model.
    assert model.config.rope_parameters == config.rope_parameters
    # Guards the hub-style rewrite the same way: no layer may have become
    # sliding-window attention.
    assert (getattr(model.config, "layer_types", None)
            == getattr(config, "layer_types", None))

    if name == "llama3_scaled":
      scaled, unscaled = _inv_freqs(model)
      assert not torch.allclose(scaled, unscaled), "rope scaling is a no-op"

    torch.manual_seed(SEED + 1)
    input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ))
    np.savez_compressed(out_dir / "ref.npz", **_reference(model, input_ids))
    _describe(name, out_dir, model)
  return 0


if __name__ == "__main__":
  # Fixture names to (re)generate; none means all of them.
  sys.exit(main(sys.argv[1:]))
