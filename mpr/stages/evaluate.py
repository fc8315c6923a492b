"""Stage `eval`: the agent at fixed precisions on one split: success, steps, tokens and time.

For each precision in `eval.precisions` the policy plays every game of `eval.split` (an evenly
spaced subset of `eval.num_games` when > 0) with that variant at every step, and the episodes are
logged to `episodes_<split>_<precision>.jsonl` (resumable). The first precision is the reference
the others are compared with. Writes results.json, summary.md (the comparison table, then one
table per precision by task type) and prints the comparison.

With `eval.fidelity`, each quantized precision is also compared with the reference token by token:
the reference's own episodes are replayed (teacher-forced) through both, and the mean KL(p_ref ‖ p)
and argmax agreement over the action tokens go into the table (mpr.eval.fidelity).

Cost columns come from the step records: model ms/step is the variant's batched call time shared
among the episodes in the batch; env ms/step is the engine's time for the step (`env.engine`,
recorded in results.json and the table's title).
"""
from __future__ import annotations

import os

from mpr import io
from mpr.agent import agent as agent_lib, demos, models
from mpr.envs.pool import open_pool
from mpr.eval import fidelity, summary as summary_lib
from mpr.models.quant import precision
from mpr.stages.common import play_logged, serving_variants, split_games

CONFIG_KEYS = ("seed", "env", "model", "agent", "eval")


def comparison_table(results: dict, reference: str, title: str) -> str:
  ref = results[reference]["summary"]["overall"]["success"]
  lines = [f"### {title}", "",
           "| precision | weights MiB | success % | 95% CI | Δ pts | KL/token | argmax agree % | mean steps "
           "| model ms/step | env ms/step | prefill tok/step | scored+decoded tok/step | mapped % |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for name, r in results.items():
    o, c = r["summary"]["overall"], r["costs"]
    lo, hi = o["success_ci95"]
    delta = "—" if name == reference else f"{100 * (o['success'] - ref):+.1f}"
    f = r.get("fidelity")
    fid = f"{f['kl']:.4f} | {100 * f['argmax_agreement']:.1f}" if f and f["tokens"] else "— | —"
    lines.append(f"| {name} | {r['weight_bytes'] / 2**20:.2f} | {100 * o['success']:.1f} | "
                 f"{100 * lo:.1f}–{100 * hi:.1f} | {delta} | {fid} | {o['mean_steps']:.1f} | {c['model_ms']:.1f} | "
                 f"{c['env_ms']:.1f} | {c['tokens_prefilled']:.0f} | "
                 f"{c['tokens_scored'] + c['tokens_decoded']:.0f} | {100 * c['mapped']:.1f} |")
  return "\n".join(lines) + "\n"


def run(config, sdir: str) -> dict:
  env, ec = config.env, config.eval
  for name in ec.precisions:
    precision(name)   # an unknown name fails now, not after the first precisions have played
  policy = models.load(config.model)
  games = split_games(config, ec.split, ec.num_games)
  results: dict = {}
  reference = None   # (variant, the contexts of its episodes): kept only to compare the others with
  with open_pool(env) as pool:
    for name in ec.precisions:
      variant = serving_variants(config, sdir, policy, [name])[name]
      agent = agent_lib.from_config(config.agent, policy.tok, {name: variant}, rows=pool.num_slots,
                                    route=agent_lib.fixed(name), seed=config.seed)
      episodes = play_logged(pool, [(g, config.seed) for g in games], agent,
                             os.path.join(sdir, f"episodes_{ec.split}_{name}.jsonl"), progress=f"{name} on {ec.split}")
      results[name] = {"summary": summary_lib.summarize(episodes), "costs": summary_lib.step_costs(episodes),
                       "weight_bytes": variant.weight_bytes, "engine": env.engine}
      if ec.fidelity and reference is None:
        reference = (variant, demos.examples(episodes, policy.tok, agent_lib.prompt_format(config.agent),
                                             config.agent.budget, config.agent.max_action_tokens))
      elif ec.fidelity and variant.prec.quantized:
        results[name]["fidelity"] = fidelity.token_fidelity(reference[0], {name: variant}, reference[1])[name]
  title = f"{os.path.basename(policy.source.rstrip('/'))} on {ec.split} ({len(games)} games, {env.engine} engine)"
  table = comparison_table(results, ec.precisions[0], title)
  per = "\n".join(summary_lib.markdown_table(r["summary"], f"{name}") for name, r in results.items())
  io.atomic_write_text(os.path.join(sdir, "summary.md"), table + "\n" + per)
  io.atomic_write_json(os.path.join(sdir, "results.json"), results)
  print(table)
  return {"split": ec.split, "games": len(games), "precisions": results}
