"""Text ↔ token ids for the agent, and the chat templates its models were trained with.

  tok = Tokenizer.from_hf_dir("/path/to/Qwen3-8B")          # or mpr.models.gguf.load_gguf(...)[2]
  ids = tok.encode(chat_prompt(messages, "qwen3", enable_thinking=False))

A thin wrapper over the `tokenizers` library so callers never see its API: `encode` adds no
special tokens behind the caller's back (the chat template already holds every one the model
expects), and the ids generation needs (eos, pad, bos) travel with the vocabulary they index.

The chat templates are plain functions rather than the checkpoint's jinja template: the agent
loop renders a prompt every step, and each family it serves needs only a few lines. They
reproduce the official templates' output for system/user/assistant messages (no tools).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import tokenizers

from mpr.errors import UserError

Message = dict   # {"role": "system" | "user" | "assistant", "content": str}


class Tokenizer:
  def __init__(self, tok: tokenizers.Tokenizer, eos_ids: Sequence[int], pad_id: Optional[int] = None,
               bos_id: Optional[int] = None, source: str = "tokenizer"):
    self._tok = tok
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.eos_ids = tuple(dict.fromkeys(int(i) for i in eos_ids))
    if not self.eos_ids:
      raise UserError(f"{source}: no end-of-sequence token, so generation could never stop")
    # Padding positions are never attended to, so any id works; eos is the usual convention.
    self.pad_id = self.eos_ids[0] if pad_id is None else int(pad_id)
    self.bos_id = None if bos_id is None else int(bos_id)
    for name, i in [("eos", e) for e in self.eos_ids] + [("pad", self.pad_id), ("bos", self.bos_id)]:
      if i is not None and not 0 <= i < self.vocab_size:
        raise UserError(f"{source}: {name} token id {i} is outside the vocabulary (size {self.vocab_size})")

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> Optional[int]:
    return self._tok.token_to_id(token)

  @classmethod
  def from_file(cls, path: str) -> "Tokenizer":
    """A Hugging Face tokenizer.json, with its special tokens from the tokenizer_config.json and
    generation_config.json beside it (generation stops at the eos ids of both, as in transformers)."""
    tok = _read_tokenizer_json(path)
    folder = os.path.dirname(path)
    tcfg = _read_optional_json(os.path.join(folder, "tokenizer_config.json"))
    gcfg = _read_optional_json(os.path.join(folder, "generation_config.json"))
    eos = gcfg.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    eos_token, pad, bos = (_config_token_id(tok, tcfg, key, folder)
                           for key in ("eos_token", "pad_token", "bos_token"))
    if eos_token is not None:
      eos_ids.append(eos_token)
    return cls(tok, eos_ids, gcfg.get("pad_token_id") if pad is None else pad,
               gcfg.get("bos_token_id") if bos is None else bos, source=path)

  @classmethod
  def from_hf_dir(cls, path: str) -> "Tokenizer":
    return cls.from_file(os.path.join(path, "tokenizer.json"))


def _config_token_id(tok: tokenizers.Tokenizer, tcfg: dict, key: str, folder: str) -> Optional[int]:
  """The id of tokenizer_config.json's `key` token (e.g. "eos_token"), None when unset."""
  token = tcfg.get(key)
  if isinstance(token, dict):   # older configs store an AddedToken dict
    token = token.get("content")
  if token is None:
    return None
  i = tok.token_to_id(token)
  if i is None:
    raise UserError(f"{folder}: tokenizer_config.json {key} {token!r} is not in the vocabulary")
  return i


def _read_tokenizer_json(path: str) -> tokenizers.Tokenizer:
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such tokenizer file")
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as e:   # the Rust side raises a bare Exception for every parse error
    raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None


def _read_optional_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise UserError(f"{path}: expected a JSON object")
  return data


# --- chat templates ------------------------------------------------------------------------------

_ROLES = ("system", "user", "assistant")
_SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_QWEN2_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."   # Qwen2.5-Instruct


def _turn(role: str, content: str) -> str:
  return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _split_thinking(content: str) -> tuple[str, str]:
  """(reasoning, answer) of an assistant message that holds a `<think>…</think>` block."""
  if "</think>" not in content:
    return "", content
  head, answer = content.split("</think>")[0], content.split("</think>")[-1]
  return head.rstrip("\n").split("<think>")[-1].lstrip("\n"), answer.lstrip("\n")


def _qwen3_assistant(content: str, after_last_query: bool, last: bool) -> str:
  # Qwen3 drops the reasoning of turns answered before the latest user query, and writes a
  # (possibly empty) think block for the turns after it, as its template does.
  reasoning, answer = _split_thinking(content)
  if after_last_query and (last or reasoning):
    reasoning = reasoning.strip("\n")
    return _turn("assistant", f"<think>\n{reasoning}\n</think>\n\n{answer}")
  return _turn("assistant", answer)


def _qwen3(messages: Sequence[Message], add_generation_prompt: bool, enable_thinking: bool) -> str:
  users = [i for i, m in enumerate(messages) if m["role"] == "user"
           and not (m["content"].startswith("<tool_response>") and m["content"].endswith("</tool_response>"))]
  last_query = users[-1] if users else len(messages) - 1
  out = [_qwen3_assistant(m["content"], i > last_query, i == len(messages) - 1)
         if m["role"] == "assistant" else _turn(m["role"], m["content"])
         for i, m in enumerate(messages)]
  if add_generation_prompt:
    # Thinking off is an empty think block the model then continues after.
    out.append("<|im_start|>assistant\n" + ("" if enable_thinking else "<think>\n\n</think>\n\n"))
  return "".join(out)


def _chatml(default_system: str):
  """Plain ChatML that opens with `default_system` when the messages bring no system turn
  (SmolLM2, Qwen2.5). Neither has a thinking mode: their templates ignore the flag, as this does."""
  def render(messages: Sequence[Message], add_generation_prompt: bool, enable_thinking: bool) -> str:
    del enable_thinking
    system = [] if not messages or messages[0]["role"] == "system" else [_turn("system", default_system)]
    out = system + [_turn(m["role"], m["content"]) for m in messages]
    return "".join(out) + ("<|im_start|>assistant\n" if add_generation_prompt else "")
  return render


_R1_BOS, _R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def _deepseek_r1(messages: Sequence[Message], add_generation_prompt: bool, enable_thinking: bool) -> str:
  # DeepSeek-R1-Distill (Llama and Qwen bases): system text right after BOS, role tags without
  # newlines, answers closed by EOS with their reasoning dropped. The model always thinks; "thinking
  # off" pre-fills an empty think block, the usual way to make it answer at once.
  system = "".join(m["content"] for m in messages if m["role"] == "system")
  out = [_R1_BOS + system]
  for m in messages:
    if m["role"] == "user":
      out.append("<｜User｜>" + m["content"])
    elif m["role"] == "assistant":
      out.append("<｜Assistant｜>" + _split_thinking(m["content"])[1] + _R1_EOS)
  if add_generation_prompt:
    out.append("<｜Assistant｜><think>\n" + ("" if enable_thinking else "\n</think>\n\n"))
  return "".join(out)


_STYLES = {"qwen3": _qwen3, "qwen2": _chatml(_QWEN2_SYSTEM), "smollm2": _chatml(_SMOLLM2_SYSTEM),
           "deepseek-r1": _deepseek_r1}
# The text that closes an assistant turn (and so ends a generated action).
TURN_END = {"qwen3": "<|im_end|>\n", "qwen2": "<|im_end|>\n", "smollm2": "<|im_end|>\n", "deepseek-r1": _R1_EOS}


def chat_prompt(messages: Sequence[Message], style: str, add_generation_prompt: bool = True,
                enable_thinking: bool = False) -> str:
  """The prompt text the model's own chat template renders for `messages` (ChatML)."""
  if style not in _STYLES:
    raise UserError(f"unknown chat style {style!r}; known: {sorted(_STYLES)}")
  for m in messages:
    if m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
      raise UserError(f"chat message {m!r}: needs a role in {list(_ROLES)} and string content")
  return _STYLES[style](messages, add_generation_prompt, enable_thinking)
