"""FastEnv: ALFWorld's TextWorld engine re-implemented in process, same texts, ~100x faster.

The real path (`mpr.envs.alfworld.AlfworldEnv`) translates the game's PDDL with Fast Downward,
asks its C++ search library for the applicable operators after every step, and renders each
command and feedback with TextWorld's context-sensitive grammar. FastEnv evaluates the same PDDL
directly over a set of facts and renders the same grammar, reproducing the observable quirks:

* Two fact sets. `true` is the planner's state (preconditions, the goal). `view` is what TextWorld
  keeps for the grammar: the initial atoms, then for every effect atom of an applied operator the
  atom, or for a delete `not_<pred>` in place of the atom. The planner reports every effect of
  the operator whatever its condition, adds before deletes of the same atom, so after any "use"
  the view says `not_ison` while the planner's lamp is on.
* An operator whose effects all repeat its own preconditions is a no-op that the translator
  drops, so "go to" a receptacle at the agent's own location is not admissible; effects that
  repeat a precondition are dropped likewise and never reach the view.
* Names: "<class> <n>" numbered over the sorted ids of everything in the initial facts, the first
  id getting the highest number; ids with no class part keep a trailing space ("agent1 ").
* Queries list their matches in sorted fact order, each placeholder bound to a distinct object.
* Where two operators give the same command (in the alfred domain only "use X" for an object in
  two receptacles of one location), the first found runs; their effects and texts are the same.

Per game file, everything that does not depend on the state (parsed PDDL and grammar, names, the
initial observation and admissible commands, command texts of state-independent templates) is
computed once and cached by path; reset only copies the initial fluent facts.
"""
from __future__ import annotations

import ast
import functools
import json
from collections import defaultdict
from typing import Iterator, Optional

from mpr.envs.alfworld import EpisodeEnv
from mpr.envs.fastworld import pddl, textgen
from mpr.envs.games import GameSpec
from mpr.errors import UserError

NOTHING_HAPPENS = "Nothing happens."


class Facts:
  """Atoms by predicate, indexed by (predicate, argument position, object)."""

  __slots__ = ("by_pred", "index")

  def __init__(self):
    self.by_pred: dict[str, set] = defaultdict(set)
    self.index: dict[tuple, set] = defaultdict(set)

  def add(self, pred: str, args: tuple) -> None:
    s = self.by_pred[pred]
    if args not in s:
      s.add(args)
      for i, a in enumerate(args):
        self.index[pred, i, a].add(args)

  def remove(self, pred: str, args: tuple) -> None:
    s = self.by_pred.get(pred)
    if s and args in s:
      s.discard(args)
      for i, a in enumerate(args):
        self.index[pred, i, a].discard(args)

  def has(self, pred: str, args: tuple) -> bool:
    s = self.by_pred.get(pred)
    return s is not None and args in s

  def matching(self, pred: str, pattern: tuple):
    """Atoms of pred agreeing with pattern (None = any) on its bound positions."""
    best = None
    for i, a in enumerate(pattern):
      if a is not None:
        cand = self.index.get((pred, i, a))
        if not cand:
          return ()
        if best is None or len(cand) < len(best):
          best = cand
    if best is None:
      return self.by_pred.get(pred, ())
    return [t for t in best if all(p is None or p == v for p, v in zip(pattern, t))]

  def copy_with(self, fluent: set[str]) -> "Facts":
    """A copy whose fluent predicates are fresh and whose static ones are shared."""
    out = Facts()
    for p, s in self.by_pred.items():
      out.by_pred[p] = set(s) if p in fluent else s
    for k, s in self.index.items():
      out.index[k] = set(s) if k[0] in fluent else s
    return out


class F:
  """A compiled formula node: kind in atom/not/and/or/eq/exists/forall, with its free variables."""
  __slots__ = ("kind", "pred", "args", "kids", "qvars", "vars", "alts")

  def __init__(self, kind, pred=None, args=(), kids=(), qvars=()):
    self.kind, self.pred, self.args, self.kids, self.qvars = kind, pred, args, tuple(kids), tuple(qvars)
    if kind in ("atom", "eq"):
      v = {a for a in args if a.startswith("?")}
    else:
      v = set().union(*(k.vars for k in self.kids)) if self.kids else set()
    self.vars = frozenset(v - {q for q, _ in self.qvars})
    self.alts = None    # for a quantifier: its body's search alternatives, built on first use


def compile_formula(f: tuple) -> F:
  kind = f[0]
  if kind == "atom":
    return F("atom", f[1], f[2])
  if kind == "eq":
    return F("eq", args=(f[1], f[2]))
  if kind == "not":
    return F("not", kids=[compile_formula(f[1])])
  if kind in ("and", "or"):
    return F(kind, kids=[compile_formula(g) for g in f[1]])
  return F(kind, kids=[compile_formula(f[2])], qvars=f[1])


def _rename(f: F, ren: dict) -> F:
  if f.kind in ("atom", "eq"):
    return F(f.kind, f.pred, tuple(ren.get(a, a) for a in f.args))
  inner = {k: v for k, v in ren.items() if k not in {q for q, _ in f.qvars}}
  return F(f.kind, kids=[_rename(k, inner) for k in f.kids], qvars=f.qvars)


def branches(f: F, params: frozenset = frozenset()) -> list[tuple[list, list]]:
  """f as alternative conjunctions (literals, existential (var, type)s) for the search.

  Conjunctions and existentials are opened up so their atoms can bind variables; a disjunction
  is split into alternatives only where it must bind something, else it stays a filter. The
  alternatives may overlap; callers dedupe what they project out.
  """
  out = [([], [])]
  counter = [0]

  def add(g: F, alts):
    if g.kind == "and":
      for k in g.kids:
        alts = add(k, alts)
      return alts
    if g.kind == "exists":
      counter[0] += 1
      ren = {q: f"{q}#{counter[0]}" for q, _ in g.qvars}
      alts = [(lits, ex + [(ren[q], t) for q, t in g.qvars]) for lits, ex in alts]
      return add(_rename(g.kids[0], ren), alts)
    return [(lits + [g], ex) for lits, ex in alts]

  out = add(f, out)
  result = []
  for lits, ex in out:
    bindable = set().union(*(l.vars for l in lits if l.kind == "atom")) if lits else set()
    needed = (params | {q for q, _ in ex})
    split = next((l for l in lits if l.kind == "or" and (l.vars & needed) - bindable), None)
    if split is None:
      result.append((lits, ex))
      continue
    rest = [l for l in lits if l is not split]
    for k in split.kids:
      for lits2, ex2 in branches(F("and", kids=rest + [k]), params | {q for q, _ in ex}):
        result.append((lits2, ex + ex2))
  return result


class _Solver:
  """Satisfying assignments of compiled formulas over a Facts, objects typed as in the problem."""

  def __init__(self, facts: Facts, of_type: dict[str, frozenset], sizes: dict[str, int]):
    self.facts, self.of_type, self.sizes = facts, of_type, sizes

  def holds(self, f: F, env: dict) -> bool:
    kind = f.kind
    if kind == "atom":
      return self.facts.has(f.pred, tuple([env.get(a, a) for a in f.args]))
    if kind == "not":
      return not self.holds(f.kids[0], env)
    if kind == "and":
      return all(self.holds(g, env) for g in f.kids)
    if kind == "or":
      return any(self.holds(g, env) for g in f.kids)
    if kind == "eq":
      return env.get(f.args[0], f.args[0]) == env.get(f.args[1], f.args[1])
    if f.alts is None:
      # Renamed apart from the variables outside; forall x. g is "no x with not g".
      ren = {q: f"{q}#q" for q, _ in f.qvars}
      body = f.kids[0] if kind == "exists" else F("not", kids=f.kids)
      free = [(ren[q], t) for q, t in f.qvars]
      f.alts = [Plan(lits, free + ex, self.sizes) for lits, ex in branches(_rename(body, ren), frozenset(ren.values()))]
    found = self._any_solution(f.alts, env)
    return found if kind == "exists" else not found

  def _any_solution(self, plans, env: dict) -> bool:
    return any(next(p.run(self, env), None) is not None for p in plans)


class Plan:
  """A fixed join order for one conjunction: bind the free variables atom by atom, smallest and
  most constrained atoms first, and test every other literal as soon as its variables are bound."""

  def __init__(self, lits: list, free: list, sizes: dict):
    types = dict(free)
    bound = set().union(*(l.vars for l in lits)) - set(types) if lits else set()   # the caller's
    rest = [l for l in lits if not l.vars <= bound]
    self.pre = [l for l in lits if l.vars <= bound]
    self.steps = []
    for var, _ in free:
      while var not in bound:
        atoms = [l for l in rest if l.kind == "atom" and l.vars - bound]
        if atoms:
          best = min(atoms, key=lambda l: (not any(a in bound or a[0] != "?" for a in l.args), sizes.get(l.pred, 0)))
          rest.remove(best)
          fixed = tuple((i, a) for i, a in enumerate(best.args) if a in bound or a[0] != "?")
          new = tuple((i, a, types[a]) for i, a in enumerate(best.args) if a[0] == "?" and a not in bound)
          bound |= {a for _, a, _ in new}
          step = ("bind", best.pred, len(best.args), fixed, new)
        else:
          bound.add(var)
          step = ("enum", var, types[var])
        now = [l for l in rest if l.vars <= bound]
        rest = [l for l in rest if not l.vars <= bound]
        self.steps.append((step, now))

  def run(self, solver: "_Solver", env: dict) -> Iterator[dict]:
    if all(solver.holds(l, env) for l in self.pre):
      yield from self._from(solver, 0, env)

  def _from(self, solver, i: int, env: dict) -> Iterator[dict]:
    if i == len(self.steps):
      yield env
      return
    step, tests = self.steps[i]
    of_type = solver.of_type
    if step[0] == "enum":
      for obj in sorted(of_type.get(step[2], ())):
        env2 = {**env, step[1]: obj}
        if all(solver.holds(l, env2) for l in tests):
          yield from self._from(solver, i + 1, env2)
      return
    _, pred, n, fixed, new = step
    pattern = [None] * n
    for pos, a in fixed:
      pattern[pos] = env.get(a, a)
    for tup in list(solver.facts.matching(pred, tuple(pattern))):
      env2 = dict(env)
      for pos, a, t in new:
        v = tup[pos]
        if env2.setdefault(a, v) != v or v not in of_type.get(t, ()):
          break
      else:
        if all(solver.holds(l, env2) for l in tests):
          yield from self._from(solver, i + 1, env2)


def _conjuncts(f: tuple) -> list[tuple]:
  """The top-level conjuncts of a parsed (tuple) formula."""
  if f[0] == "and":
    return [c for g in f[1] for c in _conjuncts(g)]
  return [f]


class Entity:
  """What the grammar's expressions see of an object (TextWorld's EntityInfo)."""
  __slots__ = ("id", "name", "type", "indefinite", "definite")

  def __init__(self, id_: str, name: str, type_: str):
    self.id, self.name, self.type = id_, name, type_
    self.indefinite, self.definite = "a", "the"

  def __str__(self):
    return self.name


def demangled_names(ids) -> dict[str, str]:
  """alfworld's Demangler(shuffle=False): "apple_bar_..." → "apple <n>", numbered from the end."""
  ids = sorted(ids)
  counts: dict[str, int] = defaultdict(int)
  parsed = {}
  for i in ids:
    text = i.replace("_bar_", "|").replace("_minus_", "-").replace("_plus_", "+")
    text = text.replace("_dot_", ".").replace("_comma_", ",")
    parts = text.split("|", 1)
    if len(parts) == 1:
      parsed[i] = (text, None)
      continue
    name = parts[0] + ("basin" if "basin" in i else "")
    parsed[i] = (name, True)
    counts[name] += 1
  names = {}
  for i in ids:
    name, numbered = parsed[i]
    if numbered:
      names[i] = f"{name} {counts[name]}"
      counts[name] -= 1
    else:
      names[i] = f"{name} "
  return names


class Game:
  """One game file, compiled: everything that does not depend on the state."""

  def __init__(self, path: str):
    with open(path) as f:
      data = json.load(f)
    for key in ("pddl_domain", "pddl_problem", "grammar"):
      if key not in data:
        raise UserError(f"{path}: not a TextWorld PDDL game (no {key!r})")
    self.path = path
    self.walkthrough = list(data.get("walkthrough") or [])
    self.domain = pddl.parse_domain(data["pddl_domain"])
    self.problem = pddl.parse_problem(data["pddl_problem"], self.domain)
    self.grammar = textgen.parse_document(data["grammar"])
    self.types = self.problem.objects
    self.of_type = self._objects_by_type()
    self.init = Facts()
    for pred, args in self.problem.init:
      for a in args:
        if a not in self.types:
          raise UserError(f"{path}: :init names unknown object {a!r}")
      self.init.add(pred, args)
    self.sizes = {p: len(t) for p, t in self.init.by_pred.items()}
    self.fluent = {e[2] for a in self.domain.actions for e in a.effects}
    self.view_fluent = self.fluent | {"not_" + p for p in self.fluent}
    self.actions = []
    for a in self.domain.actions:
      if a.name not in self.grammar.actions:
        raise UserError(f"{path}: PDDL action {a.name!r} has no template in the game grammar")
      self.actions.append(_CompiledAction(a, self))
    ids = {a for s in self.init.by_pred.values() for t in s for a in t}
    self.entities = {i: Entity(i, n, self.types[i]) for i, n in demangled_names(ids).items()}
    self.goal = compile_formula(self.problem.goal)
    self.initial: Optional[tuple] = None   # (intro, commands, won), filled by the first reset
    self._check_expressions()

  def _objects_by_type(self) -> dict[str, frozenset]:
    parents = dict(self.domain.types)
    out: dict[str, set] = defaultdict(set)
    for obj, t in self.problem.objects.items():
      seen = set()
      while t not in seen:
        seen.add(t)
        out[t].add(obj)
        t = parents.get(t, "object")
    return {t: frozenset(s) for t, s in out.items()}

  def _check_expressions(self) -> None:
    """Refuses, at load, expressions and queries the evaluator does not implement."""
    def walk(symbols):
      for s in symbols:
        if s[0] == "l":
          walk([s[1]])
        elif s[0] == "c":
          if s[1][0] == "e":
            textgen.check_expression(s[1][1])
          if s[2] is not None:
            textgen.parse_query(s[2])
    for rules in self.grammar.rules.values():
      for _, rhs in rules:
        walk(rhs)
    for a in self.grammar.actions.values():
      walk(a.feedback)
    for t in self.grammar.templates.values():
      walk(t)


class _CompiledAction:
  def __init__(self, a: pddl.Action, game: Game):
    self.name = a.name
    self.params = a.params
    self.placeholders = [(v[1:], t) for v, t in a.params]
    self.plans = [Plan(lits, a.params + ex, game.sizes)
                  for lits, ex in branches(compile_formula(a.pre), frozenset(v for v, _ in a.params))]
    self.pvars = [v for v, _ in a.params]
    fluent = game.fluent
    top = _conjuncts(a.pre)
    # The translator's operator condition: fluent literals of the top-level conjunction.
    self.top = {(lit[1], lit[2], True) for lit in top if lit[0] == "atom" and lit[1] in fluent}
    self.top |= {(lit[1][1], lit[1][2], False) for lit in top
                 if lit[0] == "not" and lit[1][0] == "atom" and lit[1][1] in fluent}
    if any(e[4] for e in a.effects):
      raise UserError(f"PDDL action {a.name}: 'forall' effects are unsupported")
    self.effects = [(compile_formula(c) if c is not None else None, pos, p, args) for c, pos, p, args, _ in a.effects]
    text = game.grammar.actions[a.name]
    self.feedback = text.feedback
    self.template = game.grammar.templates[a.name]
    self.static_template = _static_symbols(self.template, game)
    self._init, self._fluent = game.init, game.fluent
    self._effects_cache: dict[tuple, list] = {}
    self.commands: dict[tuple, str] = {}   # grounding -> command, for state-independent templates

  def reported_effects(self, env: dict) -> list[tuple]:
    """(condition, positive?, pred, args) the planner keeps for this grounding, in its order.

    Dropped: a delete of an atom the action also adds unconditionally (the add wins), any
    effect that its own precondition already makes so, and a conditional effect whose condition
    cannot hold (a static literal false at the start, or a literal the precondition contradicts).
    Adds precede deletes of the same atom.
    """
    key = tuple(env[v] for v, _ in self.params)
    got = self._effects_cache.get(key)
    if got is None:
      got = self._effects_cache[key] = self._reported_effects(env)
    return got

  def _reported_effects(self, env: dict) -> list[tuple]:
    ground = [(c, pos, p, tuple(env.get(x, x) for x in args)) for c, pos, p, args in self.effects]
    adds = {(p, g) for c, pos, p, g in ground if pos and c is None}
    top = {(p, tuple(env.get(x, x) for x in args), pos) for p, args, pos in self.top}
    kept = [e for e in ground if not (not e[1] and (e[2], e[3]) in adds) and (e[2], e[3], e[1]) not in top
            and (e[0] is None or self._possible(e[0], env, top))]
    order: dict = {}
    for _, _, p, g in kept:
      order.setdefault((p, g), len(order))
    return sorted(kept, key=lambda e: (order[e[2], e[3]], not e[1]))

  def _possible(self, cond: "F", env: dict, top: set) -> bool:
    """False when a literal of the condition's conjunction is ruled out before the search starts."""
    lits = cond.kids if cond.kind == "and" else (cond,)
    for lit in lits:
      pos, atom = (False, lit.kids[0]) if lit.kind == "not" else (True, lit)
      if atom.kind != "atom":
        continue
      g = tuple(env.get(x, x) for x in atom.args)
      if atom.pred not in self._fluent and self._init.has(atom.pred, g) != pos:
        return False
      if (atom.pred, g, not pos) in top:
        return False
    return True


def _static_symbols(symbols, game: Game) -> bool:
  """Whether a derivation from these symbols can only read facts no action changes."""
  def queries(syms, seen):
    for s in syms:
      if s[0] == "l":
        yield from queries([s[1]] + [("n", t) for t in ("list_empty", "list_separator", "list_last_separator")],
                           seen)
      elif s[0] == "c":
        if s[2] is not None:
          yield textgen.parse_query(s[2])
        if s[1][0] == "n":
          yield from queries([s[1]], seen)
      elif s[0] == "n" and s[1] not in seen:
        seen.add(s[1])
        for cond, rhs in game.grammar.rules.get(s[1], ()):
          if cond is not None:
            yield cond
          yield from queries(rhs, seen)
  for q in queries(symbols, set()):
    if any(p in game.view_fluent for p, _ in q):
      return False
  return True


@functools.lru_cache(maxsize=256)
def load_game(path: str) -> Game:
  """The compiled game; cached per path (games are read-only)."""
  return Game(path)


class _Renderer:
  """TextWorld's grammar derivation over the view facts."""

  def __init__(self, game: Game, view: Facts):
    self.game, self.view = game, view

  def derive(self, symbols: list, mapping: dict, variables: dict) -> str:
    return "".join(self._symbol(s, mapping, variables) for s in symbols)

  def _symbol(self, s, mapping, variables) -> str:
    kind = s[0]
    if kind == "t":
      return s[1]
    if kind == "n":
      return self._nonterminal(s[1], mapping, variables)
    if kind == "c":
      return "".join(self._items(s, mapping, variables))
    items = self._items(s[1], mapping, variables)
    if not items:
      return self._nonterminal("list_empty", mapping, variables)
    if len(items) == 1:
      return items[0]
    sep = self._nonterminal("list_separator", mapping, variables)
    last = self._nonterminal("list_last_separator", mapping, variables)
    return sep.join(items[:-1]) + last + items[-1]

  def _items(self, c, mapping, variables) -> list[str]:
    expr, given = c[1], c[2]
    contexts = [(mapping, variables)]
    if given is not None:
      contexts = []
      for m in self.query(_query(given), mapping):
        v = dict(variables)
        v.update({ph[0]: self.game.entities[obj] for ph, obj in m.items()})
        contexts.append((m, v))
    if expr[0] == "n":
      return [self._nonterminal(expr[1], m, v) for m, v in contexts]
    return [str(_evaluate(expr[1], v)) for m, v in contexts]

  def _nonterminal(self, tag: str, mapping, variables) -> str:
    rules = self.game.grammar.rules.get(tag)
    if not rules:
      raise UserError(f"game grammar: unknown symbol #{tag}#")
    for cond, rhs in rules:
      if cond is None or next(iter(self.query(cond, mapping, first=True)), None) is not None:
        return self.derive(rhs, mapping, variables)
    raise UserError(f"game grammar: no rule of #{tag}# applies")

  def query(self, q, mapping: dict, first: bool = False) -> list[dict]:
    """TextWorld's all_assignments: matches in sorted fact order, new placeholders on unused objects."""
    types = self.game.types
    out: list[dict] = []
    m = dict(mapping)
    used = set(m.values())

    def rec(depth):
      if depth == len(q):
        out.append(dict(m))
        return
      pred, args = q[depth]
      pattern = tuple(m.get(ph) for ph in args)
      for tup in sorted(self.view.matching(pred, pattern)):
        if not _exact_types(tup, args, types, self.game):
          continue
        bound = []
        for ph, v in zip(args, tup):
          have = m.get(ph)
          if have is None:
            if v in used:
              break
            m[ph] = v
            used.add(v)
            bound.append(ph)
          elif have != v:
            break
        else:
          rec(depth + 1)
        for ph in bound:
          used.discard(m.pop(ph))
        if first and out:
          return
    rec(0)
    return out


def _exact_types(tup, args, types, game) -> bool:
  """Whether a fact has the query's signature; refuses facts of a subtype (ordering unknown)."""
  exact = True
  for v, (_, t) in zip(tup, args):
    vt = types[v]
    if vt != t:
      exact = False
      if v in game.of_type.get(t, ()):
        raise UserError(f"game grammar: query over {t!r} matches a fact on a {vt!r}; unsupported")
  return exact


@functools.lru_cache(maxsize=None)
def _query(text: str):
  return tuple((p, tuple(a)) for p, a in textgen.parse_query(text))


@functools.lru_cache(maxsize=None)
def _compiled(code: str):
  return textgen.check_expression(code).body


def _evaluate(code: str, variables: dict):
  return _eval_node(_compiled(code), variables, code)


def _eval_node(node, variables, code):
  if isinstance(node, ast.Name):
    if node.id not in variables:
      raise UserError(f"game grammar: {{{code.strip()}}} names {node.id!r}, which is not bound here")
    return variables[node.id]
  if isinstance(node, ast.Constant):
    return node.value
  if isinstance(node, ast.Attribute):
    return getattr(_eval_node(node.value, variables, code), node.attr)
  if isinstance(node, ast.BinOp):
    left, right = _eval_node(node.left, variables, code), _eval_node(node.right, variables, code)
    if not (isinstance(left, str) and isinstance(right, str)):
      raise UserError(f"game grammar: {{{code.strip()}}} adds non-strings")
    return left + right
  value = None
  for v in node.values:   # `or`
    value = _eval_node(v, variables, code)
    if value:
      return value
  return value


class _Episode:
  """The state of one episode: both fact sets and the commands they admit."""

  def __init__(self, game: Game):
    self.game = game
    self.true = game.init.copy_with(game.fluent)
    self.view = game.init.copy_with(game.view_fluent)
    self.solver = _Solver(self.true, game.of_type, game.sizes)
    self.render = _Renderer(game, self.view)
    self.commands: dict[str, tuple] = {}

  def admissible(self) -> dict[str, tuple]:
    """Command → (action, grounding) of the first operator that gives it."""
    cmds: dict[str, tuple] = {}
    for act in self.game.actions:
      seen = set()
      for plan in act.plans:
        for env in plan.run(self.solver, {}):
          key = tuple([env[v] for v in act.pvars])
          if key in seen:
            continue
          seen.add(key)
          cmd = act.commands.get(key)
          if cmd is None:
            cmd = self._command(act, key)
            if act.static_template:
              act.commands[key] = cmd
          if cmd and cmd not in cmds:
            cmds[cmd] = (act, key)
    return cmds

  def _command(self, act: _CompiledAction, key: tuple) -> str:
    """The command text of a grounding; "" for a no-op, which the translator drops."""
    if not act.reported_effects(dict(zip(act.pvars, key))):
      return ""
    text = self.render.derive(act.template, *self._bindings(act, key))
    if "{" in text or "}" in text:
      text = text.format(**{i: e.name for i, e in self.game.entities.items()})
    return text

  def apply(self, act: _CompiledAction, key: tuple) -> str:
    ground = dict(zip(act.pvars, key))
    effects = act.reported_effects(ground)
    fired = [(pos, p, g) for c, pos, p, g in effects if c is None or self.solver.holds(c, ground)]
    for pos, p, g in fired:
      if not pos:
        self.true.remove(p, g)
    for pos, p, g in fired:
      if pos:
        self.true.add(p, g)
    for _, pos, p, g in effects:
      if pos:
        self.view.remove("not_" + p, g)
        self.view.add(p, g)
      else:
        self.view.remove(p, g)
        self.view.add("not_" + p, g)
    return self.render.derive(act.feedback, *self._bindings(act, key))

  def _bindings(self, act: _CompiledAction, key: tuple) -> tuple[dict, dict]:
    """(grammar placeholder → object id, placeholder name → Entity) for one grounding."""
    mapping = dict(zip(act.placeholders, key))
    return mapping, {ph[0]: self.game.entities[obj] for ph, obj in mapping.items()}

  def won(self) -> bool:
    return self.solver.holds(self.game.goal, {})


class FastState:
  """The parts of TextWorld's GameState the experts read: feedback, admissible_commands, won, facts."""

  def __init__(self, episode: _Episode, feedback: str, admissible: list[str], won: bool):
    self._episode = episode
    self._items = {"feedback": feedback, "admissible_commands": admissible, "won": won,
                   "extra.walkthrough": episode.game.walkthrough, "extra.gamefile": episode.game.path}

  def __getitem__(self, key: str):
    if key == "facts":
      return self.facts()
    return self._items[key]

  def facts(self) -> list:
    """The view facts as textworld Propositions over display names, as PddlEnv gives `facts`."""
    from textworld.logic import Proposition, Variable
    ents, types = self._episode.game.entities, self._episode.game.types
    return [Proposition(p, [Variable(ents[a].name, types[a]) for a in args])
            for p in sorted(self._episode.view.by_pred) for args in sorted(self._episode.view.by_pred[p])]


class FastEnv(EpisodeEnv):
  """One ALFWorld game at a time on FastEnv's engine: AlfworldEnv's interface, experts included."""

  def __init__(self, max_steps: int = 50, expert: Optional[str] = None):
    super().__init__(max_steps, expert)
    self._episode: Optional[_Episode] = None

  def _start(self, game: GameSpec) -> FastState:
    compiled = load_game(game.path)
    self._episode = _Episode(compiled)
    if compiled.initial is None:
      intro = self._episode.render.derive(textgen.parse_symbols("#intro#"), {}, {})
      compiled.initial = (intro, self._episode.admissible(), self._episode.won())
    intro, self._episode.commands, won = compiled.initial
    return FastState(self._episode, intro, sorted(self._episode.commands), won)

  def _advance(self, action: str) -> FastState:
    ep = self._episode
    hit = ep.commands.get(action.strip())
    if hit is None:
      return FastState(ep, NOTHING_HAPPENS, self.state["admissible_commands"], self.state["won"])
    feedback = ep.apply(*hit)
    ep.commands = ep.admissible()
    return FastState(ep, feedback, sorted(ep.commands), ep.won())
