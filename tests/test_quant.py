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


@pytest.fixture(scope="module")
def qwen():
  cfg, params = load_hf(os.path.join(FIX, "qwen3_untied"))
  ids = np.load(os.path.join(FIX, "qwen3_untied", "ref.npz"))["input_ids"]
  return cfg, params, jnp.asarray(ids)


def _logits(variant, ids):
  h, _ = variant.forward(ids, jnp.full((ids.shape[0],), ids.shape[1]), variant.init_cache(ids.shape[0], 16))
  return variant.logits(h)


@pytest.mark.parametrize("name", ["int8", "w8a8", "int4", "int3", "int2"])
def test_frozen_variant_equals_on_the_fly_quantization(qwen, name):
  cfg, params, ids = qwen
  prec = precision(name)
  served = _logits(make_variant(cfg, params, prec), ids)
  model = Decoder(cfg, Quant(prec, "train"), prec.jnp_dtype)

  @jax.jit
  def on_the_fly(p):
    h, _ = model.apply({"params": p}, ids, jnp.full((2,), 12), init_cache(cfg, 2, 16, prec.jnp_dtype))
    return model.apply({"params": p}, h, method=Decoder.logits)

  np.testing.assert_array_equal(np.asarray(served), np.asarray(on_the_fly(params)))


def test_frozen_storage_dtypes_and_memory(qwen):
  cfg, params, _ = qwen
  variants = {n: make_variant(cfg, params, precision(n)) for n in ["f32", "bf16", "int8", "int4", "int3", "int2"]}
  qvalues = {n: {str(x.dtype) for x in jax.tree.leaves(v.variables.get("aqt", {})) if "int" in str(x.dtype)}
             for n, v in variants.items()}
  assert qvalues["int8"] == {"int8"} and qvalues["int4"] == {"int4"} and qvalues["int3"] == {"int4"}
  assert qvalues["int2"] == {"int2"}
  assert "kernel" not in str(jax.tree_util.tree_structure(variants["int4"].variables["params"]["layer_0"]))
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


def test_checkpoint_round_trips(qwen, tmp_path):
  cfg, params, ids = qwen
  checkpoint.save_model(str(tmp_path / "m"), cfg, params)
  cfg2, params2 = checkpoint.load_model(str(tmp_path / "m"))
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(a, b)
  v = make_variant(cfg, params, precision("int4"))
  checkpoint.save_variant(str(tmp_path / "v"), v)
  v2 = checkpoint.load_variant(str(tmp_path / "v"))
  assert v2.weight_bytes == v.weight_bytes
  np.testing.assert_array_equal(np.asarray(_logits(v, ids)), np.asarray(_logits(v2, ids)))


def test_bad_checkpoints_fail_in_one_line(qwen, tmp_path):
  cfg, params, _ = qwen
  with pytest.raises(UserError, match="no model.json"):
    checkpoint.load_model(str(tmp_path))
  checkpoint.save_model(str(tmp_path / "m"), cfg, params)
  meta = (tmp_path / "m" / "model.json")
  text = meta.read_text()
  meta.write_text(text.replace('"intermediate_size": 128', '"intermediate_size": 96'))
  with pytest.raises(UserError, match=r"layer_0/mlp/down/proj/kernel is float32\[128, 64\], expected float32\[96, 64\]"):
    checkpoint.load_model(str(tmp_path / "m"))
  meta.write_text(text)
  with pytest.raises(UserError, match="expected a frozen variant"):
    checkpoint.load_variant(str(tmp_path / "m"))
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
