"""The text half of a game file: the action/grammar document and its context-sensitive grammar.

The document (TextWorld's PDDL-logic format) declares, per action, a command template and a
feedback rule, and JSON grammars of production rules. A rule's right-hand side mixes literal text,
`#symbol#` (expand with the first rule of that symbol whose condition holds), `{expr}` (a Python
expression over the bound entities, e.g. `o.indefinite + ' ' + o.name`), `{x | query}` (x once per
match of a conjunctive query over the facts) and `[{x | query}]` (those, as an English list).

The parser reproduces TatSu's reading of a right-hand side, quirks included, because they shape
the texts: tabs between symbols are dropped; at the start of a line, leading white space and
`//` comment lines are dropped; a quoted literal loses its quotes; and parsing silently stops at
the first character no symbol can start with (`;`, `|`, `<`, `>`, an unmatched `}`), keeping what
came before. Expressions are restricted to names, attributes, string constants, `+` and `or`;
anything else is refused.

Symbols are tuples: ("t", text)  ("n", tag)  ("c", ("n", tag) | ("e", code), query or None)  ("l", c).
A query is a list of (pred, [(placeholder, type)]).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import textwrap
from typing import Optional

from mpr.errors import UserError

_TAG = re.compile(r"[\w()/!<>\-\s,.]+")
_GIVEN = re.compile(r"[^;|{}\n\[\]#]+")
_STATEMENT = re.compile(r"[^|\[\]{}\n<>]+")
_LITERAL = re.compile(r'[^;|"<>\[\]#{}]*')
_BAR = re.compile(r"\s*\|\s*")
_TABS = re.compile(r"[\t]+")
_LINE_COMMENT = re.compile(r"(//.*|\s*)\n?")


def _skip(text: str, pos: int) -> int:
  """Skips what TatSu skips before a token: tabs, and at a line start blank space or a // line."""
  while True:
    start = pos
    m = _TABS.match(text, pos)
    if m:
      pos = m.end()
    if pos == 0 or text[pos - 1] == "\n":
      m = _LINE_COMMENT.match(text, pos)
      if m:
        pos = m.end()
    if pos == start:
      return pos


def _conditional(text: str, pos: int):
  """`{expr [| query]}` at pos → (symbol, end) or None."""
  pos = _skip(text, pos)
  if not text.startswith("{", pos):
    return None
  pos = _skip(text, pos + 1)
  nt = _nonterminal(text, pos)
  if nt:
    expr, pos = nt
  else:
    m = _STATEMENT.match(text, pos)
    if not m:
      return None
    expr, pos = ("e", m.group()), m.end()
  given = None
  m = _BAR.match(text, _skip(text, pos))
  if m:
    g = _GIVEN.match(text, _skip(text, m.end()))
    if g:
      given, pos = g.group(), g.end()
  pos = _skip(text, pos)
  if not text.startswith("}", pos):
    return None
  return ("c", expr, given), pos + 1


def _nonterminal(text: str, pos: int):
  pos = _skip(text, pos)
  if not text.startswith("#", pos):
    return None
  m = _TAG.match(text, _skip(text, pos + 1))
  if not m:
    return None
  end = _skip(text, m.end())
  if not text.startswith("#", end):
    return None
  return ("n", m.group()), end + 1


def _symbol(text: str, pos: int):
  start = _skip(text, pos)
  if text.startswith("[", start):
    c = _conditional(text, start + 1)
    if c:
      end = _skip(text, c[1])
      if text.startswith("]", end):
        return ("l", c[0]), end + 1
  for parse in (_conditional, _nonterminal):
    got = parse(text, start)
    if got:
      return got
  if text.startswith('"', start):
    m = _LITERAL.match(text, start + 1)
    if text.startswith('"', m.end()):
      return ("t", m.group()), m.end() + 1
  m = _LITERAL.match(text, start)
  return ("t", m.group()), m.end()


def parse_symbols(text: str) -> list:
  """A right-hand side as symbols; stops, as TatSu does, where no symbol can be read."""
  text = text.replace("\\n", "\n")
  symbols, pos = [], 0
  while True:
    sym, end = _symbol(text, pos)
    if end == pos and symbols:
      return symbols
    symbols.append(sym)
    if end == pos:
      return symbols
    pos = end


_QUERY_PRED = re.compile(r"\s*([\w/\-]+)\s*\(([^()]*)\)\s*")
_QUERY_ARG = re.compile(r"\s*([\w']+)\s*(?::\s*([\w]+))?\s*")


def parse_query(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
  """`p(x:t, y:u) & q(x:t)` → [(p, [(x, t), (y, u)]), (q, [(x, t)])]."""
  preds = []
  for part in text.split("&"):
    m = _QUERY_PRED.fullmatch(part)
    if not m:
      raise UserError(f"grammar: unsupported query {text.strip()!r}")
    args = []
    for a in m.group(2).split(","):
      am = _QUERY_ARG.fullmatch(a)
      if not am or not am.group(2):
        raise UserError(f"grammar: unsupported query argument {a.strip()!r} in {text.strip()!r}")
      args.append((am.group(1), am.group(2)))
    preds.append((m.group(1), args))
  return preds


_ATTRS = ("name", "id", "type", "indefinite", "definite")


def check_expression(code: str) -> ast.Expression:
  """The parsed expression, if it uses only what `evaluate` implements."""
  try:
    tree = ast.parse(code.strip(), mode="eval")
  except SyntaxError:
    raise UserError(f"grammar: unparsable expression {{{code}}}") from None
  for node in ast.walk(tree):
    ok = isinstance(node, (ast.Expression, ast.Name, ast.Load, ast.BinOp, ast.Add, ast.BoolOp, ast.Or))
    ok = ok or (isinstance(node, ast.Constant) and isinstance(node.value, str))
    ok = ok or (isinstance(node, ast.Attribute) and node.attr in _ATTRS)
    if not ok:
      raise UserError(f"grammar: unsupported expression {{{code.strip()}}} ({type(node).__name__})")
  return tree


@dataclasses.dataclass
class ActionText:
  template: str
  feedback: list        # symbols


@dataclasses.dataclass
class Grammar:
  rules: dict[str, list[tuple[Optional[list], list]]]   # symbol -> [(condition query, rhs symbols)]
  actions: dict[str, ActionText]                        # lower-cased action name -> texts
  templates: dict[str, list]                            # lower-cased action name -> template symbols


_DOC_SKIP = re.compile(r"(?:\s+|#[^\n]*)*")
_DOC_TOKENS = {
    "strblock": re.compile(r'"""(?:.|\n)*?"""'),
    "str": re.compile(r'"[^"]*"'),
    "name": re.compile(r"[\w/-]+"),
}


class _Doc:
  def __init__(self, text: str):
    self.text, self.pos = text, 0

  def at_end(self) -> bool:
    self.pos = _DOC_SKIP.match(self.text, self.pos).end()
    return self.pos >= len(self.text)

  def peek(self, literal: str) -> bool:
    self.pos = _DOC_SKIP.match(self.text, self.pos).end()
    return self.text.startswith(literal, self.pos)

  def expect(self, literal: str) -> None:
    if not self.peek(literal):
      raise UserError(f"game grammar: expected {literal!r} at {self.text[self.pos:self.pos + 40]!r}")
    self.pos += len(literal)

  def take(self, kind: str) -> str:
    self.pos = _DOC_SKIP.match(self.text, self.pos).end()
    m = _DOC_TOKENS[kind].match(self.text, self.pos)
    if not m:
      raise UserError(f"game grammar: expected a {kind} at {self.text[self.pos:self.pos + 40]!r}")
    self.pos = m.end()
    return m.group()


def _rules(data: dict, where: str) -> dict:
  out = {}
  for name, rules in data.items():
    compiled = []
    for rule in rules:
      unknown = set(rule) - {"rhs", "condition", "weight"}
      if unknown or "rhs" not in rule:
        raise UserError(f"game grammar: rule {name!r} in {where} has unsupported keys {sorted(rule)}")
      cond = parse_query(rule["condition"]) if rule.get("condition") else None
      compiled.append((cond, parse_symbols(rule["rhs"])))
    out[name] = compiled
  return out


def parse_document(text: str) -> Grammar:
  doc = _Doc(text)
  merged: dict = {}
  actions: dict[str, ActionText] = {}
  while not doc.at_end():
    if doc.peek("grammar"):
      doc.expect("grammar")
      doc.expect("::")
      merged.update(json.loads(textwrap.dedent(doc.take("strblock")[3:-3])))
      doc.expect(";")
    elif doc.peek("action"):
      doc.expect("action")
      name = doc.take("name")
      doc.expect("{")
      fields = {}
      while not doc.peek("}"):
        key = doc.take("name")
        doc.expect("::")
        if key in ("template", "feedback"):
          fields[key] = doc.take("str")[1:-1]
        elif key in ("grammar", "pddl"):
          fields[key] = textwrap.dedent(doc.take("strblock")[3:-3])
        else:
          raise UserError(f"game grammar: action {name} has unsupported field {key!r}")
        doc.expect(";")
      doc.expect("}")
      if "template" not in fields or "feedback" not in fields:
        raise UserError(f"game grammar: action {name} lacks a template or feedback")
      if fields.get("pddl"):
        raise UserError(f"game grammar: action {name} has an inline pddl block (unsupported)")
      if "grammar" in fields:
        lines = [ln for ln in fields["grammar"].split("\n") if not ln.lstrip().startswith("#")]
        merged.update(json.loads("\n".join(lines)))
      actions[name.lower()] = ActionText(fields["template"], parse_symbols(fields["feedback"]))
    else:
      raise UserError(f"game grammar: unsupported construct at {text[doc.pos:doc.pos + 40]!r}")
  templates = {k: parse_symbols(a.template) for k, a in actions.items()}
  return Grammar(_rules(merged, "the game grammar"), actions, templates)
