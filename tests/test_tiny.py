"""The embedded default model: shipped tokenizer, tiny Qwen3 config, forward and generate smoke test."""
import jax.numpy as jnp
import numpy as np

from mpr.models import engine, tiny
from mpr.models.quant import precision
from mpr.models.variants import make_variant

PROMPT = ("<goal> put a clean apple in fridge. <obs> You are in the middle of a room. Looking quickly "
          "around you, you see a cabinet 2, a countertop 1, a fridge 1, and a sinkbasin 1. <act>")


def test_tokenizer_is_compact_on_alfworld_text():
  tok = tiny.tokenizer()
  assert 512 <= tok.vocab_size <= 4096   # BPE stops merging once every ALFWorld word is one token
  assert tok.eos_ids == (tok.token_to_id("<eos>"),) and tok.pad_id == tok.token_to_id("<pad>")
  for text in [PROMPT, "go to countertop 12", "take apple 1 from countertop 1", "You arrive at fridge 1."]:
    assert tok.decode(tok.encode(text)) == text
  # ALFWorld words are single tokens: a command costs a few tokens, not a dozen.
  assert len(tok.encode("take apple 1 from countertop 1")) <= 8
  assert len(tok.encode(PROMPT)) < len(PROMPT.split()) * 1.5


def test_tiny_model_forward_and_generate():
  tok = tiny.tokenizer()
  cfg = tiny.model_config(tok)
  assert cfg.qk_norm and 1e6 < cfg.num_params < 2e7    # Qwen3 architecture, a few million parameters
  params = tiny.init_params(cfg, seed=0)
  ids = tok.encode(PROMPT)
  outs = {}
  for name in ("bf16", "int4"):
    v = make_variant(cfg, params, precision(name))
    last, cache = engine.prefill(v, v.init_cache(2, 128), [ids, ids[:10]])
    gen = engine.generate(v, cache, last, max_new_tokens=6, eos_ids=tok.eos_ids)
    assert gen.tokens.shape == (2, 6) and np.all(gen.lengths <= 6)
    assert np.all(np.asarray(gen.cache["lengths"]) == np.array([len(ids), 10]) + gen.lengths - 1)
    assert all(isinstance(tok.decode(row[:n]), str) for row, n in zip(gen.tokens, gen.lengths))
    assert np.isfinite(gen.logprobs).all()
    outs[name] = v.weight_bytes
  assert outs["int4"] < outs["bf16"] / 2


def test_stop_strings_cut_text_and_cache():
  tok = tiny.tokenizer()
  ids = tok.encode("go to fridge 1\n<obs> You arrive at fridge 1.")
  text, keep = engine.cut_at_stop(tok, ids, ["\n", "<obs>"])
  assert text == "go to fridge 1" and tok.decode(ids[:keep]).startswith("go to fridge 1")
  assert keep < len(ids) and not tok.decode(ids[:keep - 1]).startswith("go to fridge 1")
  assert engine.cut_at_stop(tok, ids, ["xyz"]) == (tok.decode(ids), len(ids))
  cache = {"lengths": jnp.array([30, 40])}
  assert list(np.asarray(engine.truncate_cache(cache, [20 + keep, 40])["lengths"])) == [20 + keep, 40]
