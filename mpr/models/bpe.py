"""Training the embedded default model's tokenizer: a byte-level BPE over ALFWorld text.

ALFWorld's language is a few thousand words ("go to countertop 2", "You arrive at ..."), so a small
vocabulary (default 2048) makes almost every word and number one token, which keeps the tiny
policy's sequences short. Byte-level means any text (even a typo from free generation) encodes.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

# The tiny model's control tokens: padding, end of action, and the markers of its compact prompt.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<goal>", "<obs>", "<act>")


def train_bpe(texts: Iterable[str], vocab_size: int = 2048,
              special_tokens: Sequence[str] = SPECIAL_TOKENS):
  """Returns a trained `tokenizers.Tokenizer` (ids 0.. are the special tokens, in order)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  return tok


def save(tok, folder: str) -> str:
  """Writes folder/tokenizer.json and the tokenizer_config.json naming its eos and pad tokens, the
  layout `mpr.models.tokenizer.Tokenizer.from_hf_dir` reads. Returns the tokenizer.json path."""
  from mpr import io
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, "tokenizer.json")
  io.atomic_write_text(path, tok.to_str(pretty=False))
  io.atomic_write_json(os.path.join(folder, "tokenizer_config.json"),
                       {"eos_token": "<eos>", "pad_token": "<pad>"})
  return path
