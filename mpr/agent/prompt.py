"""What the policy reads: prompt formats, and each episode's token history under a budget.

A format is four text templates. The context of an episode is

  preamble(goal) · [observation(o_0) · action(a_0)] · [observation(o_1) · action(a_1)] · ...

and every piece is tokenized on its own, so the ids of a step never change once written: the
context only grows by appending, which is what lets each precision variant keep a KV cache of it
and catch up on the new tokens alone. The one exception is the budget: when the context would
overflow, the oldest steps (all but the first, whose observation describes the room) are dropped
in one go, down to `trim_to` tokens, so trims (and cache rebuilds) are rare. (Only an observation
too long for the budget on its own costs the first step too, and is itself cut short.)

Two families of formats:
  compact  `<goal>…<obs>…<act>cmd<eos>`: the tiny policy's, with its own special tokens.
  chat     chat turns for instruct LLMs (Qwen3, Qwen2.5, SmolLM2, DeepSeek-R1-Distill): a system message with
           the rules, the goal and optional few-shot examples; one user turn per observation
           (optionally listing the admissible commands); the assistant answers `Action: cmd` or
           thinks first.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from mpr.errors import UserError
from mpr.models.tokenizer import TURN_END, Tokenizer, chat_prompt


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  preamble: str          # uses {goal}
  observation: str       # uses {observation}, {admissible}
  action: str            # uses {action}: an action as it is appended to the history
  stop: str              # ends a generated action (it is also the action template's last text)
  action_marker: str = ""   # generated text: the command follows the last occurrence of this

  @property
  def opens_thinking(self) -> bool:
    """Whether a turn's prompt ends inside an open `<think>` block (DeepSeek-R1): generation starts thinking."""
    return "<think>" in self.observation.rsplit("</think>", 1)[-1]

  def parse(self, text: str) -> str:
    """The command inside generated text (after any thinking and the action marker)."""
    text = text.split("</think>")[-1]
    if self.action_marker and self.action_marker.strip() in text:
      text = text.rsplit(self.action_marker.strip(), 1)[-1]
    return text.split(self.stop)[0].strip().splitlines()[0].strip() if text.strip() else ""


COMPACT = Format("compact", preamble="<goal>{goal}", observation="<obs>{observation}<act>",
                 action="{action}<eos>", stop="<eos>")

RULES = ("You are an agent in a household text game. Each turn you read an observation and answer "
         "with exactly one command, copied from the admissible commands when they are listed.")


def chat(style: str, *, think: bool = False, list_admissible: bool = True, examples: Sequence[str] = ()) -> Format:
  """A chat format for `style` in mpr.models.tokenizer's chat templates (qwen3 | qwen2 | smollm2 | deepseek-r1)."""
  shots = "".join(f"\n\nExample:\n{e.strip()}" for e in examples)
  answer = ("Think briefly, then answer on the last line as 'Action: <command>'." if think
            else "Answer as 'Action: <command>'.")
  system = chat_prompt([{"role": "system", "content": f"{RULES} {answer}{shots}\n\nYour task is to: {{goal}}"}],
                       style, add_generation_prompt=False)
  user = "Observation: {observation}" + ("\nAdmissible commands: {admissible}" if list_admissible else "")
  turn = chat_prompt([{"role": "user", "content": user}], style, add_generation_prompt=True,
                     enable_thinking=think)
  if turn.startswith("<|im_start|>system"):   # smollm2, qwen2: a default system turn before a lone user turn
    turn = turn[turn.index("<|im_start|>user"):]
  if style == "deepseek-r1":   # each rendering starts with BOS; the preamble already has it
    turn = turn[turn.index("<｜User｜>"):]
  marker, end = "Action:", TURN_END[style]
  return Format(f"chat-{style}{'-think' if think else ''}", preamble=system,
                observation=turn + ("" if think else marker), action=(marker if think else "") + " {action}" + end,
                stop=end.strip(), action_marker=marker)


def make(name: str, **kw) -> Format:
  """`compact`, or `chat-qwen3` / `chat-qwen2` / `chat-smollm2` / `chat-deepseek-r1` (keywords as for `chat`)."""
  if name == "compact":
    if kw:
      raise UserError(f"prompt format compact takes no options, got {sorted(kw)}")
    return COMPACT
  if name.startswith("chat-"):
    return chat(name[len("chat-"):], **kw)
  raise UserError(f"unknown prompt format {name!r}; known: compact, chat-qwen3, chat-qwen2, chat-smollm2, "
                  "chat-deepseek-r1")


class History:
  """One episode's context as token ids: append-only until the budget forces a trim.

  `version` counts trims; a KV cache built at an older version must be rebuilt from scratch.
  """

  def __init__(self, tok: Tokenizer, fmt: Format, goal: str, budget: int, trim_to: int | None = None):
    self.tok, self.fmt, self.budget = tok, fmt, budget
    self.trim_to = trim_to if trim_to is not None else (3 * budget) // 4
    self.head = tok.encode(fmt.preamble.format(goal=goal))
    self.steps: list[list[int]] = []     # per step: its observation segment, then its action
    self.length = len(self.head)
    self.version = 0
    self.fresh = 0                       # tokens the latest step added (previous action + observation)
    self._pending = len(self.head)       # added since the latest observe(): the head, then an action

  def tokens(self) -> list[int]:
    out = list(self.head)
    for s in self.steps:
      out += s
    return out

  def observe(self, observation: str, admissible: Sequence[str], reserve: int) -> None:
    """Appends a step's observation segment, first trimming so `reserve` more tokens still fit.

    Trimming drops the oldest steps but the first (down to `trim_to`), then the first one too if
    it must; an observation too long for the budget on its own is cut short (its start is kept).
    """
    seg = self._segment(observation, admissible)
    if self.length + len(seg) + reserve > self.budget:
      target = min(self.trim_to, self.budget - len(seg) - reserve)
      latest = self.steps[-1] if self.steps else None
      while len(self.steps) > 1 and self.length + len(seg) > target:
        self.length -= len(self.steps.pop(1))
      if self.steps and self.length + len(seg) + reserve > self.budget:
        self.length -= len(self.steps.pop(0))
      self.version += 1
      if latest is not None and (not self.steps or self.steps[-1] is not latest):
        self._pending = 0                  # the latest action was trimmed away with its step
      room = self.budget - self.length - reserve
      if len(seg) > room:
        seg = self._shortened(observation, admissible, room)
    self.steps.append(seg)
    self.length += len(seg)
    self.fresh, self._pending = min(self._pending + len(seg), self.length), 0

  def _segment(self, observation: str, admissible: Sequence[str]) -> list[int]:
    return self.tok.encode(self.fmt.observation.format(observation=observation, admissible=", ".join(admissible)))

  def _shortened(self, observation: str, admissible: Sequence[str], room: int) -> list[int]:
    """The longest prefix of the observation (by characters, bisected) whose segment fits `room`."""
    lo, hi = 0, len(observation)
    while lo < hi:
      mid = (lo + hi + 1) // 2
      if len(self._segment(observation[:mid] + " ...", admissible)) <= room:
        lo = mid
      else:
        hi = mid - 1
    seg = self._segment(observation[:lo] + " ...", admissible)
    if len(seg) > room:
      raise ValueError(f"context budget {self.budget} cannot hold the goal and one step "
                       f"({self.length + len(seg)} tokens + the reserve for the action)")
    return seg

  def act(self, action_text: str) -> list[int]:
    """Appends the action taken at the current step; returns its tokens."""
    ids = self.tok.encode(self.fmt.action.format(action=action_text))
    self.steps[-1] = self.steps[-1] + ids
    self.length += len(ids)
    self._pending += len(ids)
    return ids

  def action_tokens(self, action_text: str) -> list[int]:
    return self.tok.encode(self.fmt.action.format(action=action_text))
