"""The memory plan: abstract shapes give the bytes the served variants and caches really hold."""
import os

import numpy as np
import pytest

from mpr.errors import UserError
from mpr.models import memory
from mpr.models.config import tiny
from mpr.models.decoder import init_cache
from mpr.models.hf import load_hf
from mpr.models.quant import precision, tree_bytes
from mpr.models.variants import make_variant

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.mark.parametrize("tier", ["bf16", "int4", "int3-g16-emb", "w4a8-head"])
def test_one_device_plan_is_what_the_variant_and_cache_hold(tier):
  cfg, params = load_hf(os.path.join(FIX, "qwen3_untied"))
  variant = make_variant(cfg, params, precision(tier))
  assert memory.weight_bytes(cfg, tier, 1) == variant.weight_bytes
  assert memory.cache_bytes(cfg, tier, 4, 48, 1, 1) == tree_bytes(
      {k: init_cache(cfg, 4, 48, precision(tier).jnp_dtype)[k] for k in ("k", "v")})


def test_the_scanned_loops_layer_slice_is_one_layers_weights():
  import math
  from mpr.models import params as params_lib
  cfg = tiny(vocab_size=256)
  one_layer = sum(math.prod(s) for s in params_lib.layer_shapes(cfg).values()) * 2     # bf16
  assert memory.weight_bytes(cfg, "bf16", 1, one_layer=True) == one_layer
  assert memory.weight_bytes(cfg, "int4", 1, one_layer=True) < one_layer / 3
  p = memory.plan("qwen3-1.7b", ["bf16", "int4"], (1, 1), rows=2, context=64)
  assert p.activations > memory.weight_bytes(memory.model_config("qwen3-1.7b"), "bf16", 1, one_layer=True)


def test_model_axis_divides_what_splits_and_activations_grow_with_the_chunk():
  cfg = tiny(vocab_size=256)                   # kv heads 2: a model axis of 4 cannot split the cache
  one, four = (memory.weight_bytes(cfg, "int4-g32", m) for m in (1, 4))
  assert one / 4 < four < one / 2             # projections split; norms and per-channel rows stay whole
  assert memory.cache_bytes(cfg, "bf16", 8, 64, 2, 2) == memory.cache_bytes(cfg, "bf16", 8, 64, 1, 1) // 4
  assert memory.cache_bytes(cfg, "bf16", 8, 64, 2, 4) == memory.cache_bytes(cfg, "bf16", 8, 64, 1, 1) // 2
  small, big = (memory.activation_bytes(cfg, np.dtype("bfloat16"), 4, c, 256) for c in (16, 128))
  assert 0 < small < big
  local = memory.local_block(memory.model_config("qwen3-8b"), 8)
  assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (4, 1, 1536)


def test_plan_table_and_fit():
  p = memory.plan("smollm2-135m", ["bf16", "int4"], (1, 1), rows=4, context=512, chunk=128)
  assert p.total == sum(p.weights.values()) + sum(p.caches.values()) + p.activations
  assert all(p.fits().values())                # a 135M model fits every chip
  table = memory.markdown([p])
  assert "| smollm2-135m | 1×1 | 4 × 512 (128) |" in table and table.count("| yes") == len(memory.CHIPS)


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt-9"], "neither a known model"),
    (["--model", "qwen3-0.6b", "--mesh", "2by4"], "expected DATAxMODEL"),
    (["--model", "qwen3-0.6b", "--mesh", "3x1", "--rows", "4"], "do not split over 3"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
  assert memory.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and "\n" not in err
