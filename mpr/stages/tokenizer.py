"""Stage `tokenizer`: train the tiny default model's BPE tokenizer on ALFWorld text.

The text is what the policy will read and write: goals, observations and admissible commands of
`tokenizer.num_games` train games, played along their walkthroughs (cheap, and it visits the
observations a solving agent sees). Writes `tokenizer.json` and `tokenizer_config.json`.
"""
from __future__ import annotations

import os

from mpr import io
from mpr.envs.pool import open_pool
from mpr.envs.rollout import expert_policy, rollout
from mpr.models import bpe
from mpr.models.tokenizer import Tokenizer
from mpr.stages.common import split_games

CONFIG_KEYS = ("seed", "env", "tokenizer")


def episode_texts(episode) -> list[str]:
  texts = [episode.goal]
  for s in episode.steps:
    texts.append(s.observation)
    texts.extend(s.admissible)
  return texts


def run(config, sdir: str) -> dict:
  env, tc = config.env, config.tokenizer
  games = split_games(config, tc.split, tc.num_games)
  with open_pool(env, expert="walkthrough") as pool:
    episodes = rollout(pool, [(g, config.seed) for g in games], expert_policy,
                       progress=f"walkthroughs of {tc.split} for the tokenizer")
  texts = [t for e in episodes for t in episode_texts(e)]
  tok = bpe.train_bpe(texts, tc.vocab_size)
  wrapped = Tokenizer.from_file(bpe.save(tok, sdir))
  n_tokens = sum(len(wrapped.encode(t)) for t in texts)
  n_words = sum(len(t.split()) for t in texts)
  summary = (f"tokenizer: vocab {wrapped.vocab_size} trained on {len(texts)} texts from {len(games)} "
             f"{tc.split} games; {n_tokens / max(n_words, 1):.2f} tokens per word\n")
  io.atomic_write_text(os.path.join(sdir, "summary.md"), summary)
  print(summary)
  return {"vocab_size": wrapped.vocab_size, "texts": len(texts), "games": len(games),
          "tokens_per_word": n_tokens / max(n_words, 1)}
