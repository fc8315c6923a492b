"""GPTQ low tiers (mpr.models.gptq): the solver against rounding to nearest, and the frozen variants it makes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.models import config as config_lib, gptq, params as params_lib, tiny, variants
from mpr.models.decoder import Decoder, init_cache
from mpr.models.layers import RMSNorm
from mpr.models.quant import precision

CFG = config_lib.tiny(vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                      num_kv_heads=1, head_dim=32)


def _dequant(q, s):
  g = q.shape[0] // s.shape[0]
  return (q.reshape(s.shape[0], g, -1) * s[:, None, :]).reshape(q.shape)


def _correlated_hessian(n, seed=0):
  x = np.random.default_rng(seed).normal(size=(4 * n, n)) @ np.random.default_rng(seed + 1).normal(size=(n, n))
  return x.T @ x


@pytest.mark.parametrize("name", ["int4", "int3", "int4-g16", "int3-mse", "int2"])
def test_an_identity_hessian_is_rounding_to_nearest(name):
  """With H = I no row's error moves onto another: GPTQ is plain rounding on AQT's grid."""
  prec = precision(name)
  w = np.random.default_rng(0).normal(size=(64, 24))
  q, s = gptq.quantize_kernel(w, np.eye(64), prec)
  g = prec.group_size or 64
  top = 2.0 ** (prec.weight_bits - 1) - 1
  assert np.all(np.abs(q) <= top) and np.all(q == np.round(q)) and s.shape == (64 // g, 24)
  np.testing.assert_array_equal(q, np.clip(np.round(w / np.repeat(s, g, axis=0)), -top, top))


@pytest.mark.parametrize("name", ["int4", "int3", "int4-g16"])
def test_gptq_lowers_the_output_error_on_its_calibration_inputs(name):
  prec = precision(name)
  w = np.random.default_rng(2).normal(size=(64, 32))
  h = _correlated_hessian(64)
  out_err = lambda q, s: np.trace((_dequant(q, s) - w).T @ h @ (_dequant(q, s) - w))
  rtn = out_err(*gptq.quantize_kernel(w, np.eye(64), prec))
  assert out_err(*gptq.quantize_kernel(w, h, prec)) < 0.8 * rtn


def test_hessians_come_layer_by_layer_from_the_float_models_activations():
  params = tiny.init_params(CFG, 0)
  calib = [np.random.default_rng(0).integers(0, 64, n) for n in (48, 48, 20)]
  hs = list(gptq.hessians(CFG, params, calib, head=True))
  assert [layer for layer, _ in hs] == [0, 1, None]
  kernels = {p for p in params_lib.flatten(params) if p[-1] == "kernel"}
  assert set(hs[0][1]) == set(hs[1][1]) == kernels and all(h.shape[0] == h.shape[1] for h in hs[0][1].values())
  # Layer 0's q, k and v read the normed embeddings; the head reads the whole model's final hidden states.
  model = Decoder(CFG)
  x = {"q": 0.0, "head": 0.0}
  for seq in calib:
    n = len(seq)
    emb = model.apply({"params": params}, jnp.asarray(seq)[None], method=lambda m, t: m.embed(t))
    normed = RMSNorm(CFG.rms_norm_eps).apply({"params": {"scale": params["layers"]["attn_norm"]["scale"][0]}}, emb)[0]
    final, _ = model.apply({"params": params}, jnp.asarray(seq)[None], jnp.array([n]), init_cache(CFG, 1, n, jnp.float32))
    x["q"] += np.asarray(normed.T @ normed, np.float64)
    x["head"] += np.asarray(final[0].T @ final[0], np.float64)
  np.testing.assert_allclose(hs[0][1][("layers", "attn", "q", "proj", "kernel")], x["q"], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(hs[2][1][("lm_head", "proj", "kernel")], x["head"], rtol=1e-4, atol=1e-3)


def test_frozen_variant_serves_gptqs_integers_and_tracks_the_float_model_closer():
  params = tiny.init_params(CFG, 0)
  rng = np.random.default_rng(0)
  calib = [rng.integers(0, 64, 48) for _ in range(8)]
  hs = list(gptq.hessians(CFG, params, calib))
  prec = precision("int3")
  frozen = gptq.freeze(CFG, params, prec, hs)
  path = ("layers", "mlp", "down", "proj", "kernel")
  qt = gptq._frozen_leaf(frozen, path)
  q, s = gptq.quantize_kernel(np.asarray(params_lib.flatten(params)[path][1]), hs[1][1][path], prec, qt.scale[0].dtype)
  np.testing.assert_array_equal(np.asarray(qt.qvalue[1], np.float64), q)      # layer 1's slice of the stack
  # Held-out token sequences: the GPTQ variant's next-token distributions stay closer to f32 than rounding's.
  held = jnp.asarray(np.random.default_rng(1).integers(0, 64, (1, 48)))

  def logp(v):
    hidden, _ = v.forward(held, jnp.array([48]), v.init_cache(1, 48))
    return jax.nn.log_softmax(v.logits(hidden).astype(jnp.float32))

  ref = logp(variants.make_variant(CFG, params, precision("f32")))
  kl = lambda lp: float((jnp.exp(ref) * (ref - lp)).sum(-1).mean())
  assert kl(logp(gptq.make_variant(CFG, params, prec, hs))) < kl(logp(variants.make_variant(CFG, params, prec)))


def test_bad_inputs_are_user_errors():
  params = tiny.init_params(CFG, 0)
  w, h = np.ones((64, 8)), np.eye(64)
  with pytest.raises(UserError, match="quantized precision"):
    gptq.quantize_kernel(w, h, precision("bf16"))
  with pytest.raises(UserError, match="does not match"):
    gptq.quantize_kernel(w, np.eye(32), precision("int4"))
  with pytest.raises(UserError, match="does not divide"):
    gptq.quantize_kernel(np.ones((48, 8)), np.eye(48), precision("int4-g32"))
  with pytest.raises(UserError, match=r"no calibration Hessian for layers/\S+/kernel \(layer 0\)"):
    gptq.freeze(CFG, params, precision("int4"), [])
  layer0 = next(gptq.hessians(CFG, params, [np.arange(8)]))
  with pytest.raises(UserError, match=r"\(layer 1\)"):
    gptq.freeze(CFG, params, precision("int4"), [layer0])
  with pytest.raises(UserError, match="no calibration sequences"):
    gptq.hessians(CFG, params, [])
