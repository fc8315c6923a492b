"""Tensor-parallel weights and kv heads on a ("data", "model") mesh of forced CPU devices: the same
logits and the same episodes as one device."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mpr.errors import UserError
from mpr.models import sharding
from mpr.models.config import tiny
from mpr.models.params import abstract
from mpr.models.quant import precision
from mpr.models.variants import freeze

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _specs(cfg, prec, model):
  params = abstract(cfg)
  tree = {"params": params}
  if prec.quantized:
    tree["aqt"] = jax.eval_shape(lambda p: freeze(cfg, p, prec), params)
  flat = jax.tree_util.tree_flatten_with_path(sharding.variable_specs(tree, model),
                                              is_leaf=lambda x: isinstance(x, P))[0]
  return {jax.tree_util.keystr(k): v for k, v in flat}


def test_megatron_layout_for_float_and_frozen_weights():
  cfg = tiny(vocab_size=256)
  f = _specs(cfg, precision("bf16"), 4)
  layer = "['params']['layers']"                                         # stacked: [layers, ...]
  assert f[f"{layer}['attn']['q']['proj']['kernel']"] == P(None, None, "model")
  assert f[f"{layer}['attn']['o']['proj']['kernel']"] == P(None, "model", None)
  assert f[f"{layer}['mlp']['up']['proj']['kernel']"] == P(None, None, "model")
  assert f[f"{layer}['mlp']['down']['proj']['kernel']"] == P(None, "model", None)
  assert f[f"{layer}['attn']['q_norm']['scale']"] == P(None, None)
  assert f["['params']['embed']['embedding']"] == P("model", None)      # vocabulary split
  g = _specs(cfg, precision("int4-g32-emb"), 4)
  frozen = "['aqt']['layers']['mlp']['{}']['proj']['AqtDotGeneral_0']['qrhs']['frozen']"
  assert g[frozen.format("gate") + ".qvalue"] == P(None, None, None, "model")   # [layers, groups, 32, out]
  assert g[frozen.format("gate") + ".scale[0]"] == P(None, None, None, "model")
  assert g[frozen.format("down") + ".qvalue"] == P(None, "model", None, None)   # groups of inputs split
  assert g[frozen.format("down") + ".scale[0]"] == P(None, "model", None, None)
  assert g["['aqt']['embed']['qvalue']"] == P("model", None, None)
  per_channel = _specs(cfg, precision("int4"), 4)
  assert per_channel[frozen.format("down") + ".scale[0]"] == P(None, None, None)   # one row of scales: replicated
  odd = _specs(tiny(vocab_size=754), precision("bf16"), 4)
  assert odd["['params']['embed']['embedding']"] == P(None, None)        # 754 rows do not split 4 ways


def test_cache_heads_split_only_when_they_divide():
  assert sharding.cache_spec((3, 8, 64, 4, 16), 4) == P(None, "data", None, "model", None)
  assert sharding.cache_spec((3, 8, 64, 2, 16), 4) == P(None, "data", None, None, None)
  assert sharding.cache_spec((3, 8, 64, 2, 16), 1) == P(None, "data", None, None, None)


def test_model_axis_must_divide_the_devices():
  with pytest.raises(UserError, match="model_parallel=3"):
    sharding.make_mesh(jax.devices() * 4, 3)


_LOGITS_SCRIPT = """
import dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
from mpr.models import checkpoint, engine, memory, sharding
from mpr.models.hf import load_hf
from mpr.models.quant import leaf_bits, precision
from mpr.models.variants import make_variant
out = {}
for name in ("qwen3_untied", "llama3_scaled"):
  cfg, params = load_hf(sys.argv[1] + "/" + name)
  # bf16 weights and int4 weights, both computed in f32 so that only the layout can differ.
  half = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), params)
  tiers = {"bf16": (half, precision("f32")),
           "int4": (params, dataclasses.replace(precision("int4-g16"), dtype="float32"))}
  for tier, (p, prec) in tiers.items():
    variant = make_variant(cfg, p, prec)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (5, 11, 3, 8)]
    for data, model in ((1, 1), (4, 2), (2, 4)):
      v, cache = variant, variant.init_cache(4, 48)
      if model > 1 or data > 1:
        mesh = sharding.make_mesh(jax.devices()[:data * model], model)
        v = make_variant(cfg, p, prec, mesh=mesh)        # made split: frozen and cast on the mesh
        cache = sharding.place_cache(mesh, cache)
      last, cache = engine.prefill(v, cache, seqs)
      gen = engine.generate(v, cache, last, max_new_tokens=6)
      out[f"{name}/{tier}/{data}x{model}"] = {
          "logits": np.asarray(v.logits(last)).tolist(), "tokens": gen.tokens.tolist(),
          "cache_spec": list(gen.cache["k"].sharding.spec) if model > 1 else [],
          "q_spec": str(jax.tree.leaves(v.variables["aqt" if prec.quantized else "params"]["layers"]["attn"]["q"])[0].sharding.spec) if model > 1 else ""}
  # What one device holds is what the memory plan says it holds.
  mesh = sharding.make_mesh(jax.devices(), 4)
  for tier in ("bf16", "int4-g16"):
    v = make_variant(cfg, params, precision(tier), mesh=mesh)
    bits = sum(leaf_bits(sh.data) for x in jax.tree.leaves(v.variables) for sh in x.addressable_shards
               if sh.device == jax.devices()[0])
    out[f"{name}/{tier}/bytes"] = [bits // 8, memory.weight_bytes(cfg, tier, 4)]
    # Converted once, restored straight into the split layout: the same arrays, the same shards.
    path = f"{sys.argv[2]}/{name}_{tier}"
    checkpoint.save_variant(path, v)
    back = checkpoint.load_variant(path, mesh)
    same = jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()) and a.sharding == b.sharding,
                        v.variables, back.variables)
    out[f"{name}/{tier}/restored"] = all(jax.tree.leaves(same))
print(json.dumps(out))
"""


def _forced(n: int, script: str, *args: str) -> dict:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
  p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def test_eight_devices_give_single_device_logits_for_qwen3_and_llama(tmp_path):
  out = _forced(8, _LOGITS_SCRIPT, FIX, str(tmp_path))
  for name in ("qwen3_untied", "llama3_scaled"):
    for tier in ("bf16", "int4"):
      ref = out[f"{name}/{tier}/1x1"]
      for mesh in ("4x2", "2x4"):
        got = out[f"{name}/{tier}/{mesh}"]
        np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-5, rtol=0)
        assert got["tokens"] == ref["tokens"]
        assert "model" in got["q_spec"]                  # the weights really are split
      # Two kv heads split over a model axis of 2, and stay split through prefill and generation.
      assert out[f"{name}/{tier}/4x2"]["cache_spec"][:4] == [None, "data", None, "model"]
      assert "model" not in out[f"{name}/{tier}/2x4"]["cache_spec"]      # 2 heads do not split 4 ways
    for tier in ("bf16", "int4-g16"):
      held, planned = out[f"{name}/{tier}/bytes"]
      assert held == planned
      assert out[f"{name}/{tier}/restored"]


_PALLAS_SCRIPT = """
import dataclasses, json, sys
import jax, numpy as np
from mpr.agent import agent as agent_lib, models
from mpr.errors import UserError
from mpr.models import checkpoint, engine, sharding
from mpr.models.hf import load_hf
from mpr.models.quant import precision
from mpr.models.variants import make_variant
from mpr.router.routes import random_route
out = {}
meshes = {"int4-g16": ((1, 1), (4, 2), (2, 4)), "int8-head": ((1, 1), (2, 4)), "int4": ((1, 1), (4, 2))}
for name, tiers in (("qwen3_untied", ("int4-g16", "int8-head")), ("llama3_scaled", ("int4",))):
  cfg, params = load_hf(sys.argv[1] + "/" + name)
  for tier in tiers:
    prec = dataclasses.replace(precision(tier + "-pallas"), dtype="float32")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (5, 11, 3, 8)]
    for data, model in meshes[tier]:
      mesh = sharding.make_mesh(jax.devices()[:data * model], model) if data * model > 1 else None
      v = make_variant(cfg, params, prec, mesh=mesh)
      cache = v.init_cache(4, 48) if mesh is None else sharding.place_cache(mesh, v.init_cache(4, 48))
      last, cache = engine.prefill(v, cache, seqs)
      gen = engine.generate(v, cache, last, max_new_tokens=6)
      down = v.variables["aqt"]["layers"]["mlp"]["down"]["proj"]["packed"]
      out[f"{name}/{tier}/{data}x{model}"] = {
          "logits": np.asarray(v.logits(last)).tolist(), "tokens": gen.tokens.tolist(), "shards": down.shards,
          "down_spec": list(down.values.sharding.spec) if mesh else [],
          "head": "lm_head" in v.variables["aqt"]}
mesh = sharding.make_mesh(jax.devices(), 4)
try:          # 10 groups of 16 inputs cannot be dealt out to 4 devices
  make_variant(cfg, params, precision("int4-g16-pallas"), mesh=mesh)
except UserError as e:
  out["refused"] = str(e)
# Converted on a mesh, restored straight into it; refused on a mesh with another model axis.
cfg, params = load_hf(sys.argv[1] + "/qwen3_untied")
v = make_variant(cfg, params, precision("int4-g16-pallas"), mesh=mesh)
checkpoint.save_variant(sys.argv[2] + "/v", v)
back = checkpoint.load_variant(sys.argv[2] + "/v", mesh)
same = jax.tree.map(lambda a, b: bool((np.asarray(a) == np.asarray(b)).all()) and a.sharding == b.sharding,
                    v.variables, back.variables)
out["restored"] = all(jax.tree.leaves(same)) and back.packed_for == 4
for what, call in (("other_mesh", lambda: checkpoint.load_variant(sys.argv[2] + "/v", sharding.make_mesh(jax.devices(), 2))),
                   ("agent", lambda: agent_lib.from_config(
                       agent_lib.agent_config(devices=8, model_parallel=4), pol.tok, pol.variants(["int4-pallas"]),
                       rows=4, route=random_route("int4-pallas", "int4-pallas", 0.5, seed=0)))):
  pol = models.load(models.model_config())
  try:
    call()
  except UserError as e:
    out[what] = str(e)
print(json.dumps(out))
"""


def test_pallas_kernel_on_a_mesh_gives_single_device_logits(tmp_path):
  """The fused kernel on 2 × 4 and 4 × 2 meshes: column-parallel projections on each device's outputs,
  row-parallel ones packed per device and summed; the single-device logits and tokens (f32 compute)."""
  out = _forced(8, _PALLAS_SCRIPT, FIX, str(tmp_path))
  for key, got in out.items():
    if key.count("/") != 2 or key.endswith("1x1"):
      continue
    ref = out[key.rsplit("/", 1)[0] + "/1x1"]
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-5, rtol=0)
    assert got["tokens"] == ref["tokens"]
    model = int(key[-1])
    assert got["shards"] == model and got["down_spec"][:2] == [None, "model"]   # [layers, K(/2), N]: inputs split
  assert out["qwen3_untied/int8-head/2x4"]["head"]                    # the LM head through the kernel too
  assert "down: kernels.pack: 10 scale groups do not split over 4 input blocks" in out["refused"]
  assert out["restored"]
  assert "packed for a model axis of 4, this run's is 2" in out["other_mesh"]
  assert "packed for another mesh than the agent's" in out["agent"]


_EPISODES_SCRIPT = """
import json, sys
from mpr.agent import agent as agent_lib, models
from mpr.envs.games import find_games
from mpr.envs.pool import EnvPool
from mpr.envs.rollout import rollout
from mpr.router.routes import random_route
import jax
pol = models.load(models.model_config())
games = find_games("valid_seen", source="real")[:4]
ac = agent_lib.agent_config(devices=int(sys.argv[1]), model_parallel=int(sys.argv[2]))
with EnvPool(1, 4, max_steps=6) as pool:
  agent = agent_lib.from_config(ac, pol.tok, pol.variants(["bf16", "int4"]), rows=4,
                                route=random_route("bf16", "int4", 0.5, seed=0))
  eps = rollout(pool, [(g, 0) for g in games], agent)
print(json.dumps({"mesh": dict(agent.mesh.shape) if agent.mesh else {},
                  "steps": [[[s.action, s.precision, s.action_probs] for s in e.steps] for e in eps]}))
"""


def test_data_and_model_parallel_agents_play_the_same_episodes(alfworld_data):
  """The agent on 2 data × 4 model shards plays one device's episodes, on both tiers."""
  one, mesh = (_forced(8, _EPISODES_SCRIPT, str(d), str(m)) for d, m in ((1, 1), (8, 4)))
  assert one["mesh"] == {} and mesh["mesh"] == {"data": 2, "model": 4}
  assert {p for e in one["steps"] for _, p, _ in e} == {"bf16", "int4"}
  for ea, eb in zip(one["steps"], mesh["steps"], strict=True):
    assert [a[:2] for a in ea] == [b[:2] for b in eb]
    for (_, _, pa), (_, _, pb) in zip(ea, eb):
      # bf16 compute: a split contraction sums its partial products in another order.
      np.testing.assert_allclose(pa, pb, atol=2e-2)
