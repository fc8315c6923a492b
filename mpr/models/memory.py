"""The memory plan: per-device bytes of each tier's weights, KV caches and activations on a mesh, and
whether they fit a chip.

  python -m mpr.models.memory --model qwen3-8b --mesh 1x8 --tiers bf16,int4 --rows 32 --context 6176

Nothing here is a hand-kept table. Weights are `jax.eval_shape` of the very variants the agent
serves (make_variant: float leaves, frozen AQT values and scales at their container widths), divided
as mpr.models.sharding places them on a (data, model) mesh. The KV caches are eval_shape of
init_cache, one per tier (the agent keeps one cache per variant), split by rows and kv heads. The
activations are XLA's own buffer assignment (`memory_analysis()`), compiled for the host CPU from
abstract shapes, for the larger of two working sets: one decoder block's device-local shard (heads
and MLP width divided by the model axis) appending a `--chunk`-token prefill at the full context,
with its input and output hidden states (blocks run one after another), and the LM head's f32
logits and log-softmax over the chunk on the device's vocabulary shard (the scoring pass). A
prefill of a whole rebuilt context (`--chunk` = context) is the worst case. To that comes one layer's
slice of the stacked weights (the largest tier's), which the scanned layer loop reads out as a
temporary. A chip fits when the total is within what JAX uses of its HBM by default (USABLE).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Optional

import jax
import jax.numpy as jnp

from mpr.errors import UserError, one_line_errors
from mpr.models import config as config_lib
from mpr.models import sharding
from mpr.models.params import LAYERS
from mpr.models.config import ModelConfig
from mpr.models.decoder import init_cache
from mpr.models.layers import Block, rope_inv_freq
from mpr.models.quant import leaf_bits, precision
from mpr.models.variants import abstract_variables

GIB = 2**30
CHIPS = {"v5e": 16 * GIB, "v4": 32 * GIB, "H100": 80 * GIB, "H200": 140 * GIB}   # HBM per chip
# What JAX lets a program use by default: on GPUs it preallocates 75% of HBM (raise it with
# XLA_PYTHON_CLIENT_MEM_FRACTION, e.g. .95); TPUs keep a small reserve.
USABLE = {"v5e": 0.95, "v4": 0.95, "H100": 0.75, "H200": 0.75}
MODELS = {
    "qwen3-0.6b": lambda: config_lib.qwen3("0.6b"), "qwen3-1.7b": lambda: config_lib.qwen3("1.7b"),
    "qwen3-4b": lambda: config_lib.qwen3("4b"), "qwen3-8b": lambda: config_lib.qwen3("8b"),
    "r1-llama-8b": config_lib.llama3_8b, "smollm2-135m": config_lib.smollm2_135m,
}


def model_config(name: str) -> ModelConfig:
  """A named architecture, or a checkpoint folder's config.json (HF)."""
  if name in MODELS:
    return MODELS[name]()
  path = os.path.join(name, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"--model {name!r}: neither a known model ({sorted(MODELS)}) nor a folder with config.json")
  with open(path) as f:
    return config_lib.from_hf(json.load(f))


def parse_mesh(text: str) -> tuple[int, int]:
  try:
    data, model = (int(x) for x in text.lower().split("x"))
  except ValueError:
    raise UserError(f"--mesh {text!r}: expected DATAxMODEL, e.g. 1x8") from None
  if data < 1 or model < 1:
    raise UserError(f"--mesh {text!r}: both axes must be at least 1")
  return data, model


def _shards(spec, data: int, model: int) -> int:
  size = {"data": data, "model": model}
  return math.prod(size[a] for a in spec if a is not None)


def weight_bytes(cfg: ModelConfig, tier: str, model: int, one_layer: bool = False) -> int:
  """Bytes of one tier's serving variables on one device of a mesh with `model` model shards; with
  `one_layer`, of one layer's slice of the stacked ones (what the scanned loop reads out per layer)."""
  variables = abstract_variables(cfg, precision(tier), model)     # a pallas tier's packing may refuse the split
  specs = sharding.variable_specs(variables, model)
  leaves = jax.tree_util.tree_leaves_with_path(variables)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  bits = sum(-(-leaf_bits(x) // _shards(s, 1, model)) for (path, x), s in zip(leaves, spec_leaves, strict=True)
             if not one_layer or LAYERS in sharding.names(path))
  return bits // 8 // (cfg.num_layers if one_layer else 1)


def cache_bytes(cfg: ModelConfig, tier: str, rows: int, context: int, data: int, model: int) -> int:
  cache = jax.eval_shape(lambda: init_cache(cfg, rows, context, precision(tier).jnp_dtype))
  return sum(leaf_bits(x) // _shards(sharding.cache_spec(x.shape, model), data, model)
             for x in (cache["k"], cache["v"])) // 8


def local_block(cfg: ModelConfig, model: int) -> ModelConfig:
  """One device's shard of a block under the Megatron split: its heads and MLP width."""
  split = lambda n: n // model if n % model == 0 else n        # what does not divide stays whole
  kv, heads = split(cfg.num_kv_heads), split(cfg.num_heads)
  return dataclasses.replace(cfg, num_heads=-(-heads // kv) * kv, num_kv_heads=kv,
                             intermediate_size=split(cfg.intermediate_size))


def activation_bytes(cfg: ModelConfig, dtype, rows: int, chunk: int, context: int) -> int:
  """XLA's temporary buffers for one block appending `chunk` tokens per row at `context` cached
  slots, plus that block's input and output hidden states."""
  block = Block(cfg, None, dtype)
  s = jax.ShapeDtypeStruct
  x = s((rows, chunk, cfg.hidden_size), dtype)
  pos, offs = s((rows, chunk), jnp.int32), s((rows,), jnp.int32)
  kv = s((1, rows, context, cfg.num_kv_heads, cfg.head_dim), dtype)    # one layer's slot of the stack
  inv = jnp.asarray(rope_inv_freq(cfg))
  fn = lambda p, x, pos, offs, k, v: block.apply(p, (x, (k, v)), 0, pos, offs, inv, kv_len=context)[0]
  params = jax.eval_shape(lambda *a: block.init(jax.random.key(0), (a[0], (a[3], a[4])), 0, a[1], a[2], inv,
                                                kv_len=context), x, pos, offs, kv, kv)
  compiled = jax.jit(fn, donate_argnums=(4, 5)).lower(params, x, pos, offs, kv, kv).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes) + 2 * leaf_bits(x) // 8


def head_bytes(cfg: ModelConfig, dtype, rows: int, chunk: int, model: int) -> int:
  """XLA's buffers for the LM head over a scored chunk (the engine's scoring pass): f32 logits of the
  device's vocabulary shard and their log-softmax, plus the hidden states it reads."""
  vocab = cfg.vocab_size // model if cfg.vocab_size % model == 0 else cfg.vocab_size
  h = jax.ShapeDtypeStruct((rows, chunk, cfg.hidden_size), dtype)
  w = jax.ShapeDtypeStruct((cfg.hidden_size, vocab), dtype)
  fn = lambda h, w: jax.nn.log_softmax(jnp.dot(h, w, preferred_element_type=jnp.float32), axis=-1)
  mem = jax.jit(fn).lower(h, w).compile().memory_analysis()
  return int(mem.temp_size_in_bytes + mem.output_size_in_bytes) + leaf_bits(h) // 8


@dataclasses.dataclass
class Plan:
  model: str
  mesh: tuple[int, int]
  rows: int
  context: int
  chunk: int
  weights: dict          # tier -> bytes per device
  caches: dict           # tier -> bytes per device
  activations: int       # bytes per device: a block's or the head's working set, whichever is larger,
                         # plus one layer's weights read out by the scanned loop

  @property
  def total(self) -> int:
    return sum(self.weights.values()) + sum(self.caches.values()) + self.activations

  def fits(self) -> dict[str, bool]:
    return {chip: self.total <= USABLE[chip] * hbm for chip, hbm in CHIPS.items()}


def plan(name: str, tiers: list[str], mesh: tuple[int, int], rows: int, context: int,
         chunk: Optional[int] = None) -> Plan:
  cfg = model_config(name)
  data, model = mesh
  if not tiers:
    raise UserError("--tiers names no precision")
  if rows < 1 or context < 1:
    raise UserError(f"--rows and --context must be positive, got {rows} and {context}")
  if rows % data:
    raise UserError(f"{rows} rows do not split over {data} data shards")
  chunk = chunk or context
  if not 0 < chunk <= context:
    raise UserError(f"--chunk {chunk} must be in 1..context ({context})")
  local = local_block(cfg, model)
  dtypes = {precision(t).jnp_dtype for t in tiers}
  return Plan(name, mesh, rows, context, chunk,
              weights={t: weight_bytes(cfg, t, model) for t in tiers},
              caches={t: cache_bytes(cfg, t, rows, context, data, model) for t in tiers},
              activations=max(max(activation_bytes(local, d, rows // data, chunk, context),
                                      head_bytes(cfg, d, rows // data, chunk, model)) for d in dtypes)
              + max(weight_bytes(cfg, t, model, one_layer=True) for t in tiers))


def markdown(plans: list[Plan]) -> str:
  head = ["model", "mesh", "rows × context (chunk)", "weights", "KV caches", "activations", "total"] + list(CHIPS)
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  gb = lambda b: f"{b / GIB:.2f}"
  for p in plans:
    weights = " + ".join(f"{t} {gb(b)}" for t, b in p.weights.items())
    caches = " + ".join(f"{gb(b)}" for b in p.caches.values())
    fits = ["yes" if ok else "no" for ok in p.fits().values()]
    lines.append(f"| {p.model} | {p.mesh[0]}×{p.mesh[1]} | {p.rows} × {p.context} ({p.chunk}) | {weights} | "
                 f"{caches} | {gb(p.activations)} | {gb(p.total)} | " + " | ".join(fits) + " |")
  return "\n".join(lines) + "\n\nGiB per device; a chip fits the plan when the total is at most what JAX uses of its HBM by default (" + ", ".join(
      f"{c} {USABLE[c]:.0%} of {b // GIB}" for c, b in CHIPS.items()) + " GiB).\n"


@one_line_errors("memory")
def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--model", action="append", required=True,
                  help=f"{sorted(MODELS)} or an HF checkpoint folder; repeat for several")
  ap.add_argument("--mesh", action="append", default=None, help="DATAxMODEL, e.g. 1x8; repeat for several (default 1x1)")
  ap.add_argument("--tiers", default="bf16,int4", help="comma-separated precisions the agent serves")
  ap.add_argument("--rows", type=int, default=32, help="episode rows (env.num_slots)")
  ap.add_argument("--context", type=int, default=6176, help="KV cache length: agent.budget + max_action_tokens (dmr_paper: 6144 + 32)")
  ap.add_argument("--chunk", type=int, default=0, help="tokens one prefill appends per row (default: the context)")
  ap.add_argument("--json", help="also write the plans here")
  args = ap.parse_args(argv)
  tiers = [t for t in args.tiers.split(",") if t]
  plans = [plan(m, tiers, parse_mesh(mesh), args.rows, args.context, args.chunk or None)
           for m in args.model for mesh in (args.mesh or ["1x1"])]
  print(markdown(plans))
  if args.json:
    with open(args.json, "w") as f:
      json.dump([{**dataclasses.asdict(p), "total": p.total, "fits": p.fits()} for p in plans], f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
