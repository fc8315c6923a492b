"""Decoder parity with Hugging Face (committed fixtures), KV cache, padding, engine operations."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.models import engine
from mpr.models.config import from_hf
from mpr.models.decoder import Decoder, init_cache
from mpr.models.hf import load_hf
from mpr.models.layers import rope_inv_freq
from mpr.models.quant import PRECISIONS, Quant, precision
from mpr.models.variants import make_variant

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
NAMES = ["qwen3_tied", "qwen3_untied", "llama3_scaled", "qwen2_tied", "qwen2_untied"]


def _load(name):
  cfg, params = load_hf(os.path.join(FIX, name))
  return cfg, params, dict(np.load(os.path.join(FIX, name, "ref.npz")))


def _forward(cfg, params, ids, lens, cache_len=16):
  m = Decoder(cfg)
  h, cache = m.apply({"params": params}, jnp.asarray(ids), jnp.asarray(lens), init_cache(cfg, len(ids), cache_len, jnp.float32))
  return h, m.apply({"params": params}, h, method=Decoder.logits), cache


@pytest.mark.parametrize("name", NAMES)
def test_f32_logits_match_hf(name):
  cfg, params, ref = _load(name)
  h, logits, _ = _forward(cfg, params, ref["input_ids"], [12, 12])
  assert np.abs(logits - ref["logits"]).max() < 1e-4
  assert np.abs(h - ref["hidden_last"]).max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_right_padded_batch_matches_hf_and_unbatched(name):
  cfg, params, ref = _load(name)
  mask = ref["pad_attention_mask"]
  _, logits, cache = _forward(cfg, params, ref["pad_input_ids"], mask.sum(1))
  valid = mask.astype(bool)
  assert np.abs(logits[valid] - ref["pad_logits"][valid]).max() < 1e-4
  assert list(np.asarray(cache["lengths"])) == list(mask.sum(1))
  n1 = int(mask[1].sum())
  _, alone, _ = _forward(cfg, params, ref["pad_input_ids"][1:, :n1], [n1])
  assert np.abs(alone[0] - logits[1, :n1]).max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_left_padded_hf_rows_equal_rows_without_padding(name):
  # HF needs left padding plus explicit position ids; here each row simply holds its real tokens.
  cfg, params, ref = _load(name)
  mask = ref["lpad_attention_mask"].astype(bool)
  rows = [ids[m] for ids, m in zip(ref["lpad_input_ids"], mask)]
  ids = np.stack([np.pad(r, (0, mask.shape[1] - len(r))) for r in rows])
  _, logits, _ = _forward(cfg, params, ids, mask.sum(1))
  for b, row in enumerate(rows):
    assert np.abs(logits[b, :len(row)] - ref["lpad_logits"][b][mask[b]]).max() < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_cached_decode_equals_full_forward(name):
  cfg, params, ref = _load(name)
  ids = ref["input_ids"]
  m, v = Decoder(cfg), {"params": params}
  cache = init_cache(cfg, 2, 16, jnp.float32)
  hs = []
  # Prefill 5, decode 4 tokens one by one, then append a 3-token chunk (the next observation).
  for a, b in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 12)]:
    h, cache = m.apply(v, jnp.asarray(ids[:, a:b]), jnp.full((2,), b - a), cache)
    hs.append(h)
  logits = m.apply(v, jnp.concatenate(hs, 1), method=Decoder.logits)
  assert np.abs(logits - ref["logits"]).max() < 1e-4


def test_rows_with_different_history_lengths_share_a_batch():
  cfg, params, ref = _load("qwen3_tied")
  ids = ref["input_ids"]
  v = make_variant(cfg, params, precision("f32"))
  cache = v.init_cache(2, 32)
  last, cache, h1 = engine.prefill(v, cache, [ids[0, :7], ids[1, :3]], return_hidden=True)
  _, cache, h2 = engine.prefill(v, cache, [ids[0, 7:], ids[1, 3:]], return_hidden=True)
  row0 = v.logits(jnp.concatenate([h1[0, :7], h2[0, :5]]))
  row1 = v.logits(jnp.concatenate([h1[1, :3], h2[1, :9]]))
  assert np.abs(row0 - ref["logits"][0]).max() < 1e-4
  assert np.abs(row1 - ref["logits"][1]).max() < 1e-4


def test_llama3_rope_scaling_frequencies():
  cfg, _, _ = _load("llama3_scaled")
  # Reference values computed by transformers (tests/fixtures/README.md).
  want = [1.0, 0.07940301, 0.00470075, 9.1158e-4, 1.7678e-4, 3.4281e-5, 6.6479e-6, 1.2892e-6]
  np.testing.assert_allclose(rope_inv_freq(cfg), want, rtol=2e-4)


@pytest.mark.parametrize("name", ["qwen3_tied", "llama3_scaled", "qwen2_tied", "qwen2_untied"])
def test_greedy_generation_matches_hf(name):
  cfg, params, ref = _load(name)
  v = make_variant(cfg, params, precision("f32"))
  last, cache = engine.prefill(v, v.init_cache(1, 32), [ref["input_ids"][0]])
  out = engine.generate(v, cache, last, max_new_tokens=8)
  assert list(out.tokens[0]) == list(ref["greedy_ids"][0])
  assert int(out.cache["lengths"][0]) == 12 + 7   # the last generated token is not fed back


def test_qwen2_every_precision_keeps_its_biases_in_float():
  cfg, params, ref = _load("qwen2_untied")
  ids, lens = jnp.asarray(ref["input_ids"]), jnp.full((2,), 12)
  want = jax.nn.log_softmax(ref["logits"], -1)
  kls = {}
  for name in PRECISIONS:
    v = make_variant(cfg, params, precision(name))
    h, _ = v.forward(ids, lens, v.init_cache(2, 16))
    lp = jax.nn.log_softmax(v.logits(h), -1)
    kls[name] = float((jnp.exp(want) * (want - lp)).sum(-1).mean())
    q = v.variables["params"]["layers"]["attn"]["q"]["proj"]
    assert q["bias"].dtype == v.prec.jnp_dtype and ("kernel" in q) != v.prec.quantized
  # Dropping the biases costs a KL of 0.027 even in f32; int8, like bf16, stays 20x closer than that.
  assert kls["f32"] < 1e-6 and kls["bf16"] < kls["int8"] < 1e-3, kls
  assert kls["int8"] < kls["w8a8"] < kls["int4"] < kls["int3"] < kls["int2"], kls


def test_qwen2_frozen_variant_equals_on_the_fly_quantization():
  cfg, params, ref = _load("qwen2_tied")
  prec, ids = precision("int4"), jnp.asarray(ref["input_ids"])
  served = make_variant(cfg, params, prec)
  h, _ = served.forward(ids, jnp.full((2,), 12), served.init_cache(2, 16))
  model = Decoder(cfg, Quant(prec, "train"), prec.jnp_dtype)

  @jax.jit   # as the served forward is: eager bf16 rounds differently
  def on_the_fly(p):
    h, _ = model.apply({"params": p}, ids, jnp.full((2,), 12), init_cache(cfg, 2, 16, prec.jnp_dtype))
    return model.apply({"params": p}, h, method=Decoder.logits)

  np.testing.assert_array_equal(np.asarray(served.logits(h)), np.asarray(on_the_fly(params)))


def test_generation_stops_at_eos_per_row():
  cfg, params, ref = _load("qwen3_tied")
  v = make_variant(cfg, params, precision("f32"))
  last, cache = engine.prefill(v, v.init_cache(2, 32), [ref["input_ids"][0], ref["input_ids"][0]])
  eos = int(ref["greedy_ids"][0][3])   # the 4th greedy token acts as eos
  out = engine.generate(v, cache, last, max_new_tokens=8, eos_ids=[eos])
  assert list(out.lengths) == [4, 4]
  assert list(out.tokens[0, :4]) == list(ref["greedy_ids"][0][:4])
  assert (out.tokens[:, 4:] == 0).all()


def test_sampled_generation_is_seeded():
  cfg, params, ref = _load("qwen3_tied")
  v = make_variant(cfg, params, precision("f32"))
  outs = []
  for seed in (0, 0, 1):
    last, cache = engine.prefill(v, v.init_cache(1, 32), [ref["input_ids"][0]])
    outs.append(engine.generate(v, cache, last, max_new_tokens=8, temperature=1.0, rng=jax.random.key(seed)).tokens)
  assert (outs[0] == outs[1]).all() and not (outs[0] == outs[2]).all()


def test_score_equals_full_forward_logprobs():
  cfg, params, ref = _load("llama3_scaled")
  ids = ref["input_ids"]
  v = make_variant(cfg, params, precision("f32"))
  last, cache = engine.prefill(v, v.init_cache(2, 32), [ids[0, :3], ids[1, :7]])
  lp = engine.score(v, cache, last, [1, 0, 1], [ids[1, 7:12], ids[0, 3:5], ids[1, 7:8]])
  full = jax.nn.log_softmax(ref["logits"], -1)
  want1 = [full[1, 6 + j, ids[1, 7 + j]] for j in range(5)]
  want0 = [full[0, 2 + j, ids[0, 3 + j]] for j in range(2)]
  np.testing.assert_allclose(lp[0], want1, atol=1e-4)
  np.testing.assert_allclose(lp[1], want0, atol=1e-4)
  np.testing.assert_allclose(lp[2], want1[:1], atol=1e-4)
  assert list(np.asarray(cache["lengths"])) == [3, 7]   # scoring leaves the cache alone


def test_prefill_score_is_prefill_then_score():
  """One pass that prefills new context and scores continuations after it gives what the two calls
  give: log-probs (full forward as reference), last hidden states, and a cache that then decodes
  the same; rows of different lengths, one row without continuations, a row already cached."""
  cfg, params, ref = _load("llama3_scaled")
  ids = ref["input_ids"]
  v = make_variant(cfg, params, precision("f32"))
  _, cache = engine.prefill(v, v.init_cache(2, 32), [ids[0, :2], ids[1, :4]])
  new = [ids[0, 2:3], ids[1, 4:7]]
  row_of, conts = [1, 1, 1], [ids[1, 7:12], ids[1, 7:9], [3, 4]]
  last, cache2, lp, hidden = engine.prefill_score(v, cache, new, row_of, conts, return_hidden=True)
  full = jax.nn.log_softmax(ref["logits"], -1)
  np.testing.assert_allclose(lp[0], [full[1, 6 + j, ids[1, 7 + j]] for j in range(5)], atol=1e-4)
  np.testing.assert_allclose(lp[1], lp[0][:2], atol=1e-6)
  assert list(np.asarray(cache2["lengths"])) == [3, 7]     # the context went in, the tree did not
  _, cache = engine.prefill(v, v.init_cache(2, 32), [ids[0, :2], ids[1, :4]])
  last_ref, cache_ref, hidden_ref = engine.prefill(v, cache, new, return_hidden=True)
  np.testing.assert_allclose(last, last_ref, atol=1e-5)
  np.testing.assert_allclose(hidden[1, :3], hidden_ref[1, :3], atol=1e-5)
  for a, b in zip(lp, engine.score(v, cache_ref, last_ref, row_of, conts)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  gen, gen_ref = (engine.generate(v, c, last_ref, max_new_tokens=4) for c in (cache2, cache_ref))
  np.testing.assert_array_equal(gen.tokens, gen_ref.tokens)
  with pytest.raises(ValueError, match="needs new context"):
    engine.prefill_score(v, gen.cache, [[], ids[1, 7:8]], [0], [[3]])


def test_next_token_distributions_at_positions():
  cfg, params, ref = _load("qwen3_untied")
  v = make_variant(cfg, params, precision("f32"))
  _, _, hidden = engine.prefill(v, v.init_cache(2, 16), list(ref["input_ids"]), return_hidden=True)
  d = engine.next_token_logprobs(v, hidden, [[0, 5], [11, 3]])
  full = jax.nn.log_softmax(ref["logits"], -1)
  assert np.abs(d[0, 1] - full[0, 5]).max() < 1e-4 and np.abs(d[1, 0] - full[1, 11]).max() < 1e-4


def test_attention_window_reads_only_what_queries_can_see():
  """A long cache with short histories: prefill, scoring and generation attend to a window of the
  cache (kv_window) and give what attending to all of it gives."""
  cfg, params, ref = _load("qwen3_untied")
  v = make_variant(cfg, params, precision("f32"))
  ids = [list(ref["input_ids"][0][:9]), list(ref["input_ids"][1][:5])]
  assert engine.kv_window(v.init_cache(2, 1000), 9 + 16) == engine.KV_MIN
  assert engine.kv_window(v.init_cache(2, 300), 290) == 300
  last, cache, hidden = engine.prefill(v, v.init_cache(2, 1000), ids, return_hidden=True)
  tokens, lens = engine.pad_batch(ids)
  full, _ = v.model.apply(v.full_variables(v.variables), tokens, lens, v.init_cache(2, 1000))
  np.testing.assert_allclose(hidden, full, atol=1e-5)
  conts = [[5, 6], [7], [8, 9, 10]]
  lp = engine.score(v, cache, last, [0, 1, 1], conts)
  _, small, _ = engine.prefill(v, v.init_cache(2, 64), ids, return_hidden=True)
  for a, b in zip(lp, engine.score(v, small, last, [0, 1, 1], conts)):   # a 64-slot cache: no window
    np.testing.assert_allclose(a, b, atol=1e-5)
  gen = engine.generate(v, cache, last, max_new_tokens=4)
  np.testing.assert_array_equal(gen.tokens, engine.generate(v, small, last, max_new_tokens=4).tokens)


def test_jit_does_not_recompile_within_a_bucket():
  cfg, params, ref = _load("qwen3_tied")
  v = make_variant(cfg, params, precision("f32"))
  engine.prefill(v, v.init_cache(2, 32), [ref["input_ids"][0][:9]] * 2)
  compiled = engine._prefill._cache_size()
  for n in (10, 12, 11):   # all bucket to 16 tokens
    engine.prefill(v, v.init_cache(2, 32), [ref["input_ids"][0][:n]] * 2)
  assert engine._prefill._cache_size() == compiled


@pytest.mark.parametrize("tier", ["bf16", "int4"])
def test_layers_are_scanned_so_depth_does_not_grow_the_program(tier):
  """One block's program, looped: an 8-layer model lowers to as many matmuls as a 2-layer one."""
  from mpr.models import config as config_lib, params as params_lib
  from mpr.models.variants import abstract_variables, Variant
  dots = {}
  for layers in (2, 8):
    cfg = config_lib.tiny(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=layers, num_heads=2,
                          num_kv_heads=1, head_dim=32)
    prec = precision(tier)
    v = Variant.serve(cfg, prec, abstract_variables(cfg, prec))
    tokens, lens = jax.ShapeDtypeStruct((2, 8), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32)
    cache = jax.eval_shape(lambda: v.init_cache(2, 16))
    text = v._forward.lower(v.variables, tokens, lens, cache).as_text()
    dots[layers] = text.count("dot_general")
    assert params_lib.expected_shapes(cfg)[("layers", "mlp", "down", "proj", "kernel")] == (layers, 128, 64)
  assert dots[2] == dots[8] > 0, dots


def test_checkpoints_from_before_the_scan_load_stacked(tmp_path):
  """The shipped policy was saved per layer ("layer_0", ...): it loads in the stacked layout, and saves in it."""
  from mpr.models import checkpoint, tiny
  path = os.path.join(tiny.ASSETS, "policy")
  assert "layout" not in json.load(open(os.path.join(path, "model.json")))
  cfg, params = checkpoint.load_model(path)
  from mpr.models import params as params_lib
  assert {p: x.shape for p, x in params_lib.flatten(params).items()} == params_lib.expected_shapes(cfg)
  checkpoint.save_model(str(tmp_path / "m"), cfg, params)
  assert json.load(open(tmp_path / "m" / "model.json"))["layout"] == "stacked"
  again = checkpoint.load_model(str(tmp_path / "m"))[1]
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), params, again)))


@pytest.mark.parametrize("text, needle", [("{cut", "invalid JSON"), ("[]", "expected a JSON object, got list"),
                                          (b"\xff\xfe", "invalid JSON")])
def test_a_broken_model_json_is_one_line(tmp_path, text, needle):
  from mpr.models import checkpoint, tiny
  path = tmp_path / "policy"
  shutil.copytree(os.path.join(tiny.ASSETS, "policy"), path)
  (path / "model.json").write_bytes(text if isinstance(text, bytes) else text.encode())
  for load in (checkpoint.load_model, checkpoint.load_variant):
    with pytest.raises(UserError, match=needle) as e:
      load(str(path))
    assert str(e.value).startswith(str(path / "model.json")) and "\n" not in str(e.value)


# --- bad inputs ---------------------------------------------------------------------------------

def _copy_fixture(tmp_path, name="qwen3_tied"):
  d = tmp_path / name
  shutil.copytree(os.path.join(FIX, name), d)
  return d


def _edit_config(d, **changes):
  cfg = json.loads((d / "config.json").read_text())
  cfg.update(changes)
  (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, needle", [
    ({"model_type": "gpt2"}, "unsupported architecture"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "unsupported rope type"),
    ({"use_sliding_window": True, "sliding_window": 128}, "sliding-window"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "sliding_attention"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_unsupported_configs_are_refused(tmp_path, changes, needle):
  d = _copy_fixture(tmp_path)
  _edit_config(d, **changes)
  with pytest.raises(UserError, match=needle):
    load_hf(str(d))


@pytest.mark.parametrize("text, needle", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (None, "missing key 'num_attention_heads'"),
    ('"big"', "bad value"),
])
def test_broken_hf_config_json_is_one_line(tmp_path, text, needle):
  d = _copy_fixture(tmp_path)
  cfg = json.loads((d / "config.json").read_text())
  if text is None:
    del cfg["num_attention_heads"]
  elif text.startswith('"'):
    cfg["hidden_size"] = json.loads(text)
  (d / "config.json").write_text(json.dumps(cfg) if text is None or text.startswith('"') else text)
  with pytest.raises(UserError, match=needle) as e:
    load_hf(str(d))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("changes, needle", [
    ({"use_sliding_window": True}, "sliding-window attention is not implemented"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types has sliding_attention layers"),
    ({"hidden_act": "gelu"}, "unsupported activation hidden_act='gelu'"),
    ({"model_type": "qwen2_moe"}, "unsupported architecture model_type='qwen2_moe'"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "unsupported rope type 'yarn'"),
])
def test_unsupported_qwen2_configs_are_refused_in_one_line(tmp_path, changes, needle):
  d = _copy_fixture(tmp_path, "qwen2_untied")
  _edit_config(d, **changes)
  with pytest.raises(UserError, match=needle) as e:
    load_hf(str(d))
  assert "\n" not in str(e.value)


def test_qwen2_hub_config_and_bias_tensors(tmp_path):
  from safetensors.numpy import load_file, save_file
  hub = json.load(open(os.path.join(FIX, "qwen2_untied", "config.json")))
  # Hub Qwen2.5 configs name a window that use_sliding_window=false switches off: accepted.
  assert hub["sliding_window"] and not hub["use_sliding_window"] and "layer_types" not in hub
  cfg, params = load_hf(os.path.join(FIX, "qwen2_untied"))
  assert (cfg.family, cfg.qkv_bias, cfg.qk_norm, cfg.head_dim) == ("qwen2", True, False, 16)
  assert cfg.num_params == sum(x.size for x in jax.tree.leaves(params))
  d = _copy_fixture(tmp_path, "qwen2_tied")
  tensors = load_file(str(d / "model.safetensors"))
  del tensors["model.layers.1.self_attn.v_proj.bias"]
  save_file(tensors, str(d / "model.safetensors"))
  with pytest.raises(UserError, match=r"missing tensor 'model.layers.1.self_attn.v_proj.bias'"):
    load_hf(str(d))


def test_missing_and_misshapen_tensors_are_named(tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy_fixture(tmp_path)
  tensors = load_file(str(d / "model.safetensors"))
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, str(d / "model.safetensors"))
  with pytest.raises(UserError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
    load_hf(str(d))
  tensors = load_file(os.path.join(FIX, "qwen3_tied", "model.safetensors"))
  tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:8]
  save_file(tensors, str(d / "model.safetensors"))
  with pytest.raises(UserError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(8, 64\)"):
    load_hf(str(d))


def test_not_a_checkpoint_dir(tmp_path):
  with pytest.raises(UserError, match="no config.json"):
    load_hf(str(tmp_path))
  d = _copy_fixture(tmp_path)
  (d / "model.safetensors").write_bytes(b"\x00garbage")
  with pytest.raises(UserError, match="unreadable safetensors"):
    load_hf(str(d))


def test_config_reads_both_rope_styles():
  tied = json.load(open(os.path.join(FIX, "qwen3_tied", "config.json")))
  untied = json.load(open(os.path.join(FIX, "qwen3_untied", "config.json")))
  assert "rope_parameters" in tied and "rope_theta" in untied
  assert from_hf(tied).rope_theta == from_hf(untied).rope_theta == 1e6
  assert from_hf(untied).head_dim == 32 and not from_hf(untied).tie_embeddings


def test_sharded_checkpoint_with_index(tmp_path):
  from safetensors.numpy import load_file, save_file
  d = _copy_fixture(tmp_path)
  tensors = load_file(str(d / "model.safetensors"))
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
  for file, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, str(d / file))
  (d / "model.safetensors").unlink()
  (d / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
  cfg, params = load_hf(str(d))
  ref = np.load(os.path.join(FIX, "qwen3_tied", "ref.npz"))
  _, logits, _ = _forward(cfg, params, ref["input_ids"], [12, 12])
  assert np.abs(logits - ref["logits"]).max() < 1e-4
  (d / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(UserError, match="shard model-00002-of-00002.safetensors listed in the index is missing"):
    load_hf(str(d))
