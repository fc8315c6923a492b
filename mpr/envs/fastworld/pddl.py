"""The PDDL half of a game file: domain and problem parsed into plain tuples, as Fast Downward reads them.

TextWorld hands the game's PDDL to Fast Downward's translator; what FastEnv has to agree with is
what that translator makes of the text, so this parser follows its reader: `;` starts a comment,
everything is lower-cased, a typed list is `names - type` where the type token is taken as written
(the alfred domain's `?l - location, ?r - receptacle` gives a type "location," that no object has,
so that quantifier never holds, in both engines). Anything outside the subset the alfred games use
is refused with a UserError naming it.

Formulas are tuples:
  ("atom", pred, args)  ("not", f)  ("and", [f])  ("or", [f])  ("eq", a, b)
  ("exists", [(var, type)], f)  ("forall", [(var, type)], f)
Effects of one action are a list of (condition formula or None, positive?, pred, args, forall vars).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from mpr.errors import UserError


def sexpr(text: str, what: str):
  """The first parenthesised expression of `text` as nested lists of lower-cased tokens."""
  tokens = []
  for line in text.split("\n"):
    line = line.split(";", 1)[0]
    tokens += line.replace("(", " ( ").replace(")", " ) ").replace("?", " ?").lower().split()
  stack: list[list] = [[]]
  for tok in tokens:
    if tok == "(":
      stack.append([])
    elif tok == ")":
      if len(stack) == 1:
        raise UserError(f"{what}: unbalanced ')'")
      done = stack.pop()
      stack[-1].append(done)
    else:
      stack[-1].append(tok)
  if len(stack) != 1 or not stack[0] or not isinstance(stack[0][0], list):
    raise UserError(f"{what}: not one parenthesised PDDL expression")
  return stack[0][0]


def typed_list(items: list, what: str) -> list[tuple[str, str]]:
  """`a b - t c` → [(a, t), (b, t), (c, "object")], as Fast Downward reads typed lists."""
  out, pending, i = [], [], 0
  while i < len(items):
    if items[i] == "-":
      if i + 1 >= len(items) or isinstance(items[i + 1], list):
        raise UserError(f"{what}: unsupported type after '-' in {items}")
      out += [(name, items[i + 1]) for name in pending]
      pending, i = [], i + 2
    elif isinstance(items[i], list):
      raise UserError(f"{what}: unsupported nested list in a typed list: {items[i]}")
    else:
      pending.append(items[i])
      i += 1
  return out + [(name, "object") for name in pending]


@dataclasses.dataclass
class Action:
  name: str                       # lower-cased, as Fast Downward names its operators
  params: list[tuple[str, str]]   # (?var, type)
  pre: tuple
  effects: list


@dataclasses.dataclass
class Domain:
  types: dict[str, str]           # type -> parent type
  predicates: set[str]
  actions: list[Action]


@dataclasses.dataclass
class Problem:
  objects: dict[str, str]         # object -> type
  init: list[tuple[str, tuple]]   # (pred, args)
  goal: tuple


def formula(x, preds: set[str], what: str):
  if not isinstance(x, list):
    raise UserError(f"{what}: unsupported formula {x!r}")
  if not x:
    return ("and", [])
  head = x[0]
  if head == "and":
    return ("and", [formula(y, preds, what) for y in x[1:]])
  if head == "or":
    return ("or", [formula(y, preds, what) for y in x[1:]])
  if head == "not" and len(x) == 2:
    return ("not", formula(x[1], preds, what))
  if head == "imply" and len(x) == 3:
    return ("or", [("not", formula(x[1], preds, what)), formula(x[2], preds, what)])
  if head in ("exists", "forall") and len(x) == 3 and isinstance(x[1], list):
    return (head, typed_list(x[1], what), formula(x[2], preds, what))
  if head == "=" and len(x) == 3 and all(isinstance(a, str) for a in x[1:]):
    return ("eq", x[1], x[2])
  if isinstance(head, str) and all(isinstance(a, str) for a in x[1:]):
    if head not in preds:
      raise UserError(f"{what}: unknown predicate {head!r}")
    return ("atom", head, tuple(x[1:]))
  raise UserError(f"{what}: unsupported formula construct {head!r}")


def _effects(x, preds: set[str], what: str, cond=None, qvars=()) -> list:
  if not isinstance(x, list) or not x:
    return []
  head = x[0]
  if head == "and":
    return [e for y in x[1:] for e in _effects(y, preds, what, cond, qvars)]
  if head == "when" and len(x) == 3:
    if cond is not None:
      raise UserError(f"{what}: unsupported nested 'when'")
    return _effects(x[2], preds, what, formula(x[1], preds, what), qvars)
  if head == "forall" and len(x) == 3:
    return _effects(x[2], preds, what, cond, qvars + tuple(typed_list(x[1], what)))
  if head in ("increase", "decrease"):
    return []   # action costs: the planner's business, not the game's
  positive = head != "not"
  atom = x if positive else x[1]
  if (not isinstance(atom, list) or not atom or not isinstance(atom[0], str) or atom[0] not in preds
      or not all(isinstance(a, str) for a in atom[1:])):
    raise UserError(f"{what}: unsupported effect {x}")
  return [(cond, positive, atom[0], tuple(atom[1:]), qvars)]


def parse_domain(text: str) -> Domain:
  d = sexpr(text, "PDDL domain")
  if d[:1] != ["define"]:
    raise UserError("PDDL domain: expected (define ...)")
  types: dict[str, str] = {}
  preds: set[str] = set()
  raw_actions = []
  for part in d[2:]:
    key = part[0] if part else None
    if key in (":requirements", ":functions"):
      continue
    if key == ":types":
      types.update(typed_list(part[1:], "PDDL domain :types"))
    elif key == ":predicates":
      preds.update(p[0] for p in part[1:])
    elif key == ":action":
      raw_actions.append(part)
    else:
      raise UserError(f"PDDL domain: unsupported section {key!r}")
  actions = []
  for part in raw_actions:
    name, fields = part[1], dict(zip(part[2::2], part[3::2]))
    unknown = set(fields) - {":parameters", ":precondition", ":effect"}
    if unknown:
      raise UserError(f"PDDL action {name}: unsupported field {sorted(unknown)[0]}")
    what = f"PDDL action {name}"
    actions.append(Action(name, typed_list(fields.get(":parameters", []), what),
                          formula(fields.get(":precondition", []), preds, what),
                          _effects(fields.get(":effect", []), preds, what)))
  return Domain(types, preds, actions)


def parse_problem(text: str, domain: Domain) -> Problem:
  p = sexpr(text, "PDDL problem")
  objects: dict[str, str] = {}
  init: list[tuple[str, tuple]] = []
  goal: Optional[tuple] = None
  for part in p[2:]:
    key = part[0] if part else None
    if key in (":domain", ":metric"):
      continue
    if key == ":objects":
      objects.update(typed_list(part[1:], "PDDL problem :objects"))
    elif key == ":init":
      for atom in part[1:]:
        if atom and atom[0] == "=":
          continue   # numeric fluents (distances, costs): not facts
        if not atom or atom[0] not in domain.predicates or not all(isinstance(a, str) for a in atom[1:]):
          raise UserError(f"PDDL problem :init: unsupported atom {atom}")
        init.append((atom[0], tuple(atom[1:])))
    elif key == ":goal":
      goal = formula(part[1], domain.predicates, "PDDL problem :goal")
    else:
      raise UserError(f"PDDL problem: unsupported section {key!r}")
  if goal is None:
    raise UserError("PDDL problem: no :goal")
  return Problem(objects, init, goal)
