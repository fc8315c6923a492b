"""AQT precision variants from one float weight set: freezing, storage, error ordering, checkpoints."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.models import checkpoint
from mpr.models.decoder import Decoder, init_cache
from mpr.models.hf import load_hf
from mpr.models.quant import Quant, precision
from mpr.models.variants import make_variant

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _fixture(name):
  cfg, params = load_hf(os.path.join(FIX, name))
  ids = np.load(os.path.join(FIX, name, "ref.npz"))["input_ids"]
  return cfg, params, jnp.asarray(ids)


@pytest.fixture(scope="module")
def qwen():
  return _fixture("qwen3_untied")


@pytest.fixture(scope="module")
def qwen_tied():
  return _fixture("qwen3_tied")


def _kl(ref_logits, variant, ids):
  ref = jax.nn.log_softmax(ref_logits, -1)
  lp = jax.nn.log_softmax(_logits(variant, ids), -1)
  return float((jnp.exp(ref) * (ref - lp)).sum(-1).mean())


def _logits(variant, ids):
  h, _ = variant.forward(ids, jnp.full((ids.shape[0],), ids.shape[1]), variant.init_cache(ids.shape[0], 16))
  return variant.logits(h)


@pytest.mark.parametrize("name,tied", [
    *((n, False) for n in ["int8", "w8a8", "int4", "int3", "int2", "w4a4", "int4-g16", "int3-mse",
                           "int4-clip0.8-head", "int4-emb", "w4a8-g16-mse-head-emb"]),
    *((n, True) for n in ["int4-head", "int4-emb", "int2-g16-head-emb"])])
def test_frozen_variant_equals_on_the_fly_quantization(qwen, qwen_tied, name, tied):
  """SERVE (frozen integer weights and scales) equals TRAIN (quantizing the float weights) bit for bit."""
  cfg, params, ids = qwen_tied if tied else qwen
  prec = precision(name)
  served = _logits(make_variant(cfg, params, prec), ids)
  model = Decoder(cfg, Quant(prec, "train"), prec.jnp_dtype)

  @jax.jit
  def on_the_fly(p):
    h, _ = model.apply({"params": p}, ids, jnp.full((ids.shape[0],), ids.shape[1]),
                       init_cache(cfg, ids.shape[0], 16, prec.jnp_dtype))
    return model.apply({"params": p}, h, method=Decoder.logits)

  np.testing.assert_array_equal(np.asarray(served), np.asarray(on_the_fly(params)))


def test_frozen_storage_dtypes_and_memory(qwen):
  cfg, params, _ = qwen
  variants = {n: make_variant(cfg, params, precision(n)) for n in ["f32", "bf16", "int8", "int4", "int3", "int2"]}
  qvalues = {n: {str(x.dtype) for x in jax.tree.leaves(v.variables.get("aqt", {})) if "int" in str(x.dtype)}
             for n, v in variants.items()}
  assert qvalues["int8"] == {"int8"} and qvalues["int4"] == {"int4"} and qvalues["int3"] == {"int4"}
  assert qvalues["int2"] == {"int2"}
  assert "kernel" not in str(jax.tree_util.tree_structure(variants["int4"].variables["params"]["layers"]))
  mem = {n: v.weight_bytes for n, v in variants.items()}
  assert mem["f32"] == 2 * mem["bf16"]
  assert mem["bf16"] > mem["int8"] > mem["int4"] == mem["int3"] > mem["int2"]
  # Projections: the int4 tree is half the int8 one (scales aside), which .nbytes would not show.
  proj = cfg.num_layers * (cfg.hidden_size * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
                           + 3 * cfg.hidden_size * cfg.intermediate_size)
  assert mem["int8"] - mem["int4"] == proj // 2


def test_error_grows_as_bits_shrink(qwen):
  cfg, params, ids = qwen
  ref = jax.nn.log_softmax(_logits(make_variant(cfg, params, precision("f32")), ids), -1)
  kls = []
  for name in ["bf16", "int8", "int4", "int3", "int2"]:
    lp = jax.nn.log_softmax(_logits(make_variant(cfg, params, precision(name)), ids), -1)
    kls.append(float((jnp.exp(ref) * (ref - lp)).sum(-1).mean()))
  assert kls == sorted(kls) and kls[0] < 1e-3 < kls[-1], kls


_EMB = ("int8-emb", "int4-emb", "int3-emb", "int2-emb")
_HEAD = ("int8-head", "int4-head", "int3-head", "int2-head")


@pytest.mark.parametrize("family,tied", [(("w8a8", "w4a8", "w4a4"), False), (_EMB, False), (_EMB, True),
                                         (_HEAD, False), (_HEAD, True),
                                         (("int8-g16-head-emb", "int4-g16-head-emb", "int2-g16-head-emb"), False)])
def test_error_grows_as_bits_shrink_with_every_option(qwen, qwen_tied, family, tied):
  cfg, params, ids = qwen_tied if tied else qwen
  ref = _logits(make_variant(cfg, params, precision("f32")), ids)
  kls = [_kl(ref, make_variant(cfg, params, precision(n)), ids) for n in family]
  assert kls == sorted(kls) and kls[-1] > 2 * kls[0], dict(zip(family, kls))
  # Quantizing the table or the head adds error to the same weights' per-channel int4.
  if family in (_EMB, _HEAD):
    base = _kl(ref, make_variant(cfg, params, precision("int4")), ids)
    assert kls[1] > base, (family[1], kls[1], base)


def test_head_and_table_are_stored_low_bit(qwen, qwen_tied):
  cfg, params, _ = qwen
  mem = {n: make_variant(cfg, params, precision(n)) for n in ["int4", "int4-head", "int4-head-emb", "int2-head-emb"]}
  v = mem["int4-head-emb"]
  assert "lm_head" not in v.variables["params"] and "embed" not in v.variables["params"]
  assert v.variables["aqt"]["embed"]["qvalue"].dtype == jnp.int4
  assert mem["int2-head-emb"].variables["aqt"]["embed"]["qvalue"].dtype == jnp.int2
  table = cfg.vocab_size * cfg.hidden_size
  sizes = {n: m.weight_bytes for n, m in mem.items()}
  # bf16 → 4 bits saves 12 of 16 bits a weight, less the scales: one per output channel (AQT's frozen
  # tree holds them in the compute dtype, bf16) or per table row (f32).
  assert sizes["int4"] - sizes["int4-head"] == table * 12 // 8 - 2 * cfg.vocab_size
  assert sizes["int4-head"] - sizes["int4-head-emb"] == table * 12 // 8 - 4 * cfg.vocab_size
  cfg, params, _ = qwen_tied     # one table serves both ends: `emb` shrinks it, `head` adds a frozen copy
  tied = {n: make_variant(cfg, params, precision(n)).weight_bytes for n in ["int4", "int4-emb", "int4-head"]}
  assert tied["int4-emb"] < tied["int4"] < tied["int4-head"]


def test_groups_must_tile_the_model(qwen):
  cfg, params, _ = qwen
  with pytest.raises(UserError, match="group size 24 does not divide"):
    make_variant(cfg, params, precision("int4-g24"))


def test_calibration_and_group_options(qwen):
  cfg, params, ids = qwen
  ref = jax.nn.log_softmax(_logits(make_variant(cfg, params, precision("f32")), ids), -1)

  def kl(prec):
    lp = jax.nn.log_softmax(_logits(make_variant(cfg, params, prec), ids), -1)
    return float((jnp.exp(ref) * (ref - lp)).sum(-1).mean())

  base = kl(precision("int3"))
  # Clipping search and finer groups exist to cut low-bit error; on these weights both must help.
  assert kl(precision("int3", calibration="mse")) < base
  assert kl(precision("int3", group_size=16)) < base


def test_unknown_precision_and_calibration():
  with pytest.raises(UserError, match="unknown precision"):
    precision("int5")
  with pytest.raises(UserError, match="unknown calibration"):
    precision("int4", calibration="gptq")
  for bad, match in [("int4-g0", "unknown option 'g0'"), ("int4-clip1.5", "unknown option"),
                     ("int4-fast", "unknown option 'fast'"), ("bf16-emb", "bf16 has float weights"),
                     ("int4-g32-g64", "'g64' repeats or contradicts"), ("int4-mse-clip0.9", "contradicts"),
                     ("int4-clip0.12345678", "does not survive its name")]:
    with pytest.raises(UserError, match=match):
      precision(bad)
  with pytest.raises(UserError, match="needs calibration='clip'"):
    precision("int4", clip_scale=0.9)


def test_precision_names_are_canonical():
  p = precision("int3-emb-mse-g32-head")
  assert p.name == "int3-g32-mse-head-emb" and precision(p.name) == p
  assert (p.weight_bits, p.group_size, p.calibration, p.quant_head, p.quant_embed) == (3, 32, "mse", True, True)
  assert precision("w4a8").act_bits == 8 and precision("w4a4").act_bits == 4
  assert precision("int4", group_size=64).name == "int4-g64"
  assert precision("int2-clip0.9").clip_scale == 0.9
  assert precision("int4-gptq-mse").name == "int4-mse-gptq" and precision("int4-mse-gptq").gptq
  with pytest.raises(UserError, match="bf16 has float weights"):
    precision("bf16-gptq")


def test_gptq_tiers_are_made_from_calibration_only(qwen):
  cfg, params, _ = qwen
  with pytest.raises(UserError, match="int3-gptq: GPTQ quantizes from calibration activations; put the convert"):
    make_variant(cfg, params, precision("int3-gptq"))


def test_checkpoint_round_trips(qwen, tmp_path):
  cfg, params, ids = qwen
  checkpoint.save_model(str(tmp_path / "m"), cfg, params)
  cfg2, params2 = checkpoint.load_model(str(tmp_path / "m"))
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)
  for name in ["int4", "w4a8-g16-mse-head-emb"]:
    v = make_variant(cfg, params, precision(name))
    checkpoint.save_variant(str(tmp_path / name), v)
    v2 = checkpoint.load_variant(str(tmp_path / name))
    assert v2.prec == v.prec and v2.weight_bytes == v.weight_bytes
    np.testing.assert_array_equal(np.asarray(_logits(v, ids)), np.asarray(_logits(v2, ids)))
  # Folders whose model.json disagrees with itself, or predates the head option, are refused.
  meta_path = tmp_path / "int4" / "model.json"
  meta = json.loads(meta_path.read_text())
  for edit, match in [({"group_size": 32}, "do not match its name 'int4'"), ({"bits": 4}, "unreadable precision")]:
    meta_path.write_text(json.dumps({**meta, "precision": {**meta["precision"], **edit}}))
    with pytest.raises(UserError, match=match):
      checkpoint.load_variant(str(tmp_path / "int4"))
  meta_path.write_text(json.dumps({**meta, "quant_head": True}))
  with pytest.raises(UserError, match="retired quant_head flag; freeze it again as int4-head"):
    checkpoint.load_variant(str(tmp_path / "int4"))


def test_bad_checkpoints_fail_in_one_line(qwen, tmp_path):
  cfg, params, _ = qwen
  with pytest.raises(UserError, match="no model.json"):
    checkpoint.load_model(str(tmp_path))
  checkpoint.save_model(str(tmp_path / "m"), cfg, params)
  meta = (tmp_path / "m" / "model.json")
  text = meta.read_text()
  meta.write_text(text.replace('"intermediate_size": 128', '"intermediate_size": 96'))
  with pytest.raises(UserError, match=r"layers/mlp/down/proj/kernel is float32\[2, 128, 64\], expected float32\[2, 96, 64\]"):
    checkpoint.load_model(str(tmp_path / "m"))
  meta.write_text(text.replace('"layout": "stacked"', '"layout": "sideways"'))
  with pytest.raises(UserError, match="unknown parameter layout 'sideways'"):
    checkpoint.load_model(str(tmp_path / "m"))
  meta.write_text(text)
  with pytest.raises(UserError, match="expected a frozen variant"):
    checkpoint.load_variant(str(tmp_path / "m"))
  # A variant frozen before the layers were stacked is refused (converted again), not misread.
  checkpoint.save_variant(str(tmp_path / "v"), make_variant(cfg, params, precision("int4")))
  vmeta = tmp_path / "v" / "model.json"
  vmeta.write_text(vmeta.read_text().replace('"layout": "stacked"', '"layout_": "per-layer"'))
  with pytest.raises(UserError, match="per-layer layout of an older mpr; convert it again"):
    checkpoint.load_variant(str(tmp_path / "v"))
  # Corrupt the array data: every data file truncated.
  for root, _, files in os.walk(tmp_path / "m" / "params"):
    for f in files:
      if root.endswith("d"):
        open(os.path.join(root, f), "wb").close()
  with pytest.raises(UserError, match="corrupt checkpoint"):
    checkpoint.load_model(str(tmp_path / "m"))


def _data_files(root):
  return sorted((os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if d.endswith("/d")),
                key=os.path.getsize)


@pytest.mark.parametrize("flips", [1, 64])
def test_flipped_bytes_in_tensor_data_are_refused(qwen, tmp_path, flips):
  cfg, params, _ = qwen
  checkpoint.save_model(str(tmp_path / "m"), cfg, params)
  biggest = _data_files(tmp_path / "m" / "params")[-1]
  data = bytearray(open(biggest, "rb").read())
  for i in range(flips):   # bytes in the middle of the file: array data, not its headers
    data[len(data) // 2 + 7 * i] ^= 0x40
  open(biggest, "wb").write(bytes(data))
  with pytest.raises(UserError, match=r"corrupt checkpoint, params/.*/d/\w+ does not match its SHA-256"):
    checkpoint.load_model(str(tmp_path / "m"))


def test_nan_weights_and_missing_file_hashes_are_refused(qwen, tmp_path):
  cfg, params, _ = qwen
  bad = jax.tree.map(jnp.asarray, params)     # a new tree: the fixture stays intact
  bad["final_norm"]["scale"] = bad["final_norm"]["scale"].at[0].set(jnp.nan)
  checkpoint.save_model(str(tmp_path / "nan"), cfg, bad)
  with pytest.raises(UserError, match="final_norm/scale holds NaN"):
    checkpoint.load_model(str(tmp_path / "nan"))
  checkpoint.save_model(str(tmp_path / "old"), cfg, params)
  meta = json.loads((tmp_path / "old" / "model.json").read_text())
  del meta["files_sha256"]
  (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
  with pytest.raises(UserError, match="lists no file hashes for params/"):
    checkpoint.load_model(str(tmp_path / "old"))


def test_token_fidelity_compares_variants_on_the_same_tokens():
  from mpr.agent import demos, models, prompt
  from mpr.eval.fidelity import token_fidelity
  from mpr.records import Episode, Step
  policy = models.load(models.model_config())
  rooms = ["fridge 1", "cabinet 2", "countertop 1", "sinkbasin 1"]
  episodes = [Episode(f"g{i}", "pick_and_place_simple", 0, "put a apple in fridge",
                      [Step(t=t, observation=f"You arrive at {rooms[(i + t) % 4]}.", admissible=[f"go to {r}" for r in rooms],
                            action=f"go to {rooms[(i + t + 1) % 4]}") for t in range(6)], won=True) for i in range(5)]
  examples = demos.examples(episodes, policy.tok, prompt.COMPACT, budget=512, reserve=24)
  variants = policy.variants(["f32", "bf16", "int4", "int2"])
  fid = token_fidelity(variants["f32"], variants, examples, batch_tokens=1024)
  marked = sum(int(x.loss[1:].sum()) for x in examples)
  assert all(f["tokens"] == marked for f in fid.values())
  assert fid["f32"]["kl"] == 0.0 and fid["f32"]["argmax_agreement"] == 1.0
  assert fid["bf16"]["kl"] < fid["int4"]["kl"] < fid["int2"]["kl"]
  assert fid["int2"]["argmax_agreement"] <= fid["int4"]["argmax_agreement"] <= 1.0
