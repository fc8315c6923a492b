"""Tokenizer wrapper and chat templates: the exact prompt bytes the checkpoints were trained on."""
import json

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from mpr.errors import UserError
from mpr.models.tokenizer import Tokenizer, chat_prompt

SYS = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2+2?"}
USER2 = {"role": "user", "content": "And 3+3?"}
ANSWER = {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}


def test_qwen3_thinking_off_appends_empty_think_block():
  assert chat_prompt([SYS, USER], "qwen3", enable_thinking=False) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
      "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_thinking_on_leaves_generation_prompt_open():
  assert chat_prompt([USER], "qwen3", enable_thinking=True) == (
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_drops_reasoning_before_last_query_and_keeps_it_after():
  assert chat_prompt([USER, ANSWER, USER2], "qwen3", enable_thinking=True) == (
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
      "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
  assert chat_prompt([USER, ANSWER], "qwen3", add_generation_prompt=False) == (
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
      "<|im_start|>assistant\n<think>\nadd\n</think>\n\n4<|im_end|>\n")


def test_smollm2_inserts_its_default_system_prompt():
  default = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
             "<|im_end|>\n")
  expected = default + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
  assert chat_prompt([USER], "smollm2") == expected
  assert chat_prompt([USER], "smollm2", enable_thinking=True) == expected   # no thinking mode
  assert chat_prompt([SYS, USER], "smollm2", add_generation_prompt=False) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n")


def test_deepseek_r1_template_by_hand():
  # The DeepSeek-R1-Distill chat template: BOS + system, role tags, answers closed by EOS without
  # their reasoning, generation prompt opening a think block.
  assert chat_prompt([SYS, USER, ANSWER, USER2], "deepseek-r1", enable_thinking=True) == (
      "<｜begin▁of▁sentence｜>Be brief.<｜User｜>What is 2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
      "<｜User｜>And 3+3?<｜Assistant｜><think>\n")
  assert chat_prompt([USER], "deepseek-r1").endswith("<｜Assistant｜><think>\n\n</think>\n\n")


@pytest.mark.parametrize("messages, style, needle", [
    ([USER], "llama3", "unknown chat style"),
    ([{"role": "tool", "content": "x"}], "qwen3", "needs a role"),
    ([{"role": "user"}], "smollm2", "string content"),
])
def test_chat_prompt_rejects_bad_input(messages, style, needle):
  with pytest.raises(UserError, match=needle):
    chat_prompt(messages, style)


# --- Tokenizer over a tokenizer.json ---------------------------------------------------------------

def _write_checkpoint_tokenizer(path) -> None:
  """A byte-level BPE (bytes only, no merges) whose post-processor would prepend <s>."""
  specials = ["<s>", "</s>", "<pad>", "<|im_end|>"]
  vocab = {t: i for i, t in enumerate(specials + pre_tokenizers.ByteLevel.alphabet())}
  tok = tokenizers.Tokenizer(models.BPE(vocab, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens(specials)
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
  tok.save(str(path / "tokenizer.json"))


def test_from_hf_dir_reads_special_ids_from_both_configs(tmp_path):
  _write_checkpoint_tokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|im_end|>", "pad_token": {"content": "<pad>"}, "bos_token": None}))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 3], "bos_token_id": 0}))
  tok = Tokenizer.from_hf_dir(str(tmp_path))
  assert (tok.eos_ids, tok.pad_id, tok.bos_id) == ((1, 3), 2, 0)
  assert tok.vocab_size == 260 and tok.token_to_id("<|im_end|>") == 3
  text = "héllo <|im_end|>"
  ids = tok.encode(text)
  assert ids[0] != 0 and ids[-1] == 3   # no implicit <s>; the special token is one id
  assert tok.decode(ids) == text and tok.decode(ids, skip_special_tokens=True) == "héllo "


def test_from_file_defaults_pad_to_eos(tmp_path):
  _write_checkpoint_tokenizer(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
  tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  assert (tok.eos_ids, tok.pad_id, tok.bos_id) == ((1,), 1, None)


def _one_line_user_error(make, needle):
  with pytest.raises(UserError, match=needle) as err:
    make()
  assert "\n" not in str(err.value)


def test_tokenizer_errors_are_one_line_user_errors(tmp_path):
  _one_line_user_error(lambda: Tokenizer.from_file(str(tmp_path / "nope.json")), "no such tokenizer file")
  (tmp_path / "tokenizer.json").write_text('{"model": ')
  _one_line_user_error(lambda: Tokenizer.from_hf_dir(str(tmp_path)), "not a valid tokenizer.json")
  _write_checkpoint_tokenizer(tmp_path)
  _one_line_user_error(lambda: Tokenizer.from_hf_dir(str(tmp_path)), "no end-of-sequence token")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eot>"}))
  _one_line_user_error(lambda: Tokenizer.from_hf_dir(str(tmp_path)), "'<eot>' is not in the vocabulary")
