"""The fused weight-only matmul (Pallas, interpret mode on CPU) against AQT's serving path."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.models import kernels
from mpr.models.hf import load_hf
from mpr.models.layers import Linear
from mpr.models.quant import Quant, precision
from mpr.models.variants import make_variant

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _aqt_serve(prec, frozen, x, n):
  """One projection as the decoder serves it: AQT's SERVE dot_general over the frozen tree."""
  layer = Linear(n, Quant(prec, "serve"), prec.jnp_dtype)
  variables = {"params": {"proj": {"kernel": jnp.zeros((x.shape[-1], n), prec.jnp_dtype)}}, "aqt": frozen}
  return layer.apply(variables, x)


@pytest.mark.parametrize("name, batch", [("int8", 3), ("int4-g32-mse", 1), ("int3-g16", 5)])
def test_fused_matmul_equals_aqt_serving(name, batch):
  cfg, params = load_hf(os.path.join(FIX, "llama3_scaled"))       # MLP 64 → 160 → 64
  prec = precision(name)
  frozen = jax.tree.map(lambda a: a[0], make_variant(cfg, params, prec).variables["aqt"]["layers"]["mlp"])   # layer 0
  key = jax.random.key(batch)
  for proj, k, n in (("gate", cfg.hidden_size, cfg.intermediate_size), ("down", cfg.intermediate_size, cfg.hidden_size)):
    qt = frozen[proj]["proj"]["AqtDotGeneral_0"]["qrhs"]["frozen"]
    w = kernels.pack(qt.qvalue, qt.scale[0], prec.weight_bits)
    x = jax.random.normal(key, (batch, k), jnp.float32).astype(prec.jnp_dtype)
    got = kernels.matmul(x, w, block_n=32, interpret=True)
    want = _aqt_serve(prec, frozen[proj], x, n)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=2e-2)
    if proj == "down":     # and, in f32, exactly the dequantized product
      deq = np.asarray(qt.qvalue, np.float32).reshape(k, n) * np.repeat(
          np.asarray(qt.scale[0], np.float32).reshape(-1, n), w.group, axis=0)
      exact = kernels.matmul(x.astype(jnp.float32), w, block_n=32, interpret=True)
      np.testing.assert_allclose(np.asarray(exact), np.asarray(x, np.float32) @ deq, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fixture, name", [("qwen2_untied", "int4-g16"), ("llama3_scaled", "int3")])
def test_pallas_precision_serves_the_models_logits(fixture, name, tmp_path):
  """A `-pallas` variant (q/k/v biases included) gives the AQT variant's logits, and saves and loads."""
  import dataclasses
  from mpr.models import checkpoint, engine
  cfg, params = load_hf(os.path.join(FIX, fixture))
  ids = [list(range(3, 15)), list(range(20, 27))]
  logits = {}
  for n in (name, name + "-pallas"):
    v = make_variant(cfg, params, dataclasses.replace(precision(n), dtype="float32"))
    last, _ = engine.prefill(v, v.init_cache(2, 32), ids)
    logits[n] = np.asarray(v.logits(last))
  np.testing.assert_allclose(logits[name + "-pallas"], logits[name], atol=1e-5, rtol=0)
  served = make_variant(cfg, params, precision(name + "-pallas"))
  assert "packed" in served.variables["aqt"]["layers"]["mlp"]["down"]["proj"]
  checkpoint.save_variant(str(tmp_path / "v"), served)
  back = checkpoint.load_variant(str(tmp_path / "v"))
  assert back.prec.kernel == "pallas" and back.weight_bytes == served.weight_bytes
  with pytest.raises(UserError, match="weight-only 8, 4 and 3 bits"):
    precision("w4a8-pallas")
  assert precision("int4-pallas-g32").name == "int4-g32-pallas"


def test_packing_keeps_every_int4_value_and_refuses_what_does_not_fit():
  q = np.arange(-8, 8, dtype=np.int8).reshape(16, 1).repeat(3, axis=1)
  w = kernels.pack(q, np.ones((1, 3), np.float32), 4)
  assert w.values.shape == (8, 3) and w.values.dtype == jnp.uint8
  lo, hi = kernels._signed_nibbles(w.values)
  np.testing.assert_array_equal(np.concatenate([np.asarray(lo), np.asarray(hi)]), q)
  with pytest.raises(UserError, match="odd"):
    kernels.pack(q[:15], np.ones((1, 3), np.float32), 4)
  with pytest.raises(UserError, match="do not tile"):
    kernels.pack(q, np.ones((3, 3), np.float32), 4)
  with pytest.raises(UserError, match="columns"):
    kernels.matmul(jnp.ones((1, 8)), w, interpret=True)


@pytest.mark.parametrize("bits, groups", [(4, 1), (4, 4), (8, 2)])
def test_row_parallel_packing_gives_each_device_its_own_inputs(bits, groups):
  """Packed for 2 devices, each half of the packed rows is the packing of its half of the inputs: the two
  partial products sum to the whole one."""
  rng = np.random.default_rng(bits + groups)
  lim = 8 if bits == 4 else 128
  q = rng.integers(-lim, lim, (64, 32)).astype(np.int8)
  scale = rng.uniform(0.01, 0.1, (groups, 32)).astype(np.float32)
  x = jnp.asarray(rng.normal(size=(3, 64)), jnp.float32)
  whole = kernels.matmul(x, kernels.pack(q, scale, bits), block_n=32, interpret=True)
  two = kernels.pack(q, scale, bits, shards=2)
  rows, g = two.values.shape[0] // 2, max(1, groups // 2)
  parts = [kernels.matmul(x[:, 32 * i:32 * (i + 1)],
                          kernels.Packed(two.values[rows * i:rows * (i + 1)],
                                         two.scale[g * i:g * (i + 1)] if groups > 1 else two.scale, bits, 2).local(),
                          block_n=32, interpret=True) for i in range(2)]
  np.testing.assert_allclose(np.asarray(parts[0] + parts[1]), np.asarray(whole), rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match="per device"):
    kernels.matmul(x, two, interpret=True)
  with pytest.raises(UserError, match="3 scale groups do not split over 2 input blocks"):
    kernels.pack(q[:48], np.ones((3, 32), np.float32), bits, shards=2)


def test_output_blocks_tile_any_width_a_power_of_two_divides():
  """N = 384 (e.g. one device's share of an MLP split 8 ways) runs in blocks of 128; a width no block
  of 16–256 columns tiles is refused when packing, naming it, not at the first forward."""
  rng = np.random.default_rng(0)
  q = rng.integers(-8, 8, (32, 384)).astype(np.int8)
  scale = rng.uniform(0.01, 0.1, (1, 384)).astype(np.float32)
  x = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)
  got = kernels.matmul(x, kernels.pack(q, scale, 4), interpret=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(x) @ (q * scale), rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match="no N block of 16–256 columns tiles 300 columns"):
    kernels.pack(q[:, :300], scale[:, :300], 4)
  with pytest.raises(UserError, match="tiles 300 columns"):     # 600 outputs, 300 per device of 2
    kernels.pack(np.zeros((32, 600), np.int8), np.ones((1, 600), np.float32), 4, out_shards=2)


def test_decode_benchmark_runs_its_smoke_shapes(tmp_path):
  import json
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / "d.json"
  p = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "decode_matmul.py"), "--smoke", "--reps", "1",
                      "--batches", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  (row,) = json.load(open(out))["rows"]
  assert row["batch"] == 2 and all(v > 0 for v in row["us"].values())
