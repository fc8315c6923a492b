import glob
import importlib.util
import json
import os
import shutil

import pytest

from mpr.config_util import check_env, env_config, parse_arg
from mpr.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types_and_flags():
  a = parse_arg("split=valid_unseen,num_games=7,runlocal", split="valid_seen", num_games=0, runlocal=False)
  assert (a.split, a.num_games, a.runlocal) == ("valid_unseen", 7, True)


@pytest.mark.parametrize("arg", ["nope=1", "num_games=seven", "runlocal=maybe"])
def test_parse_arg_rejects_bad_input(arg):
  with pytest.raises(UserError):
    parse_arg(arg, num_games=0, runlocal=False)


def test_parse_arg_lists_the_keys_it_was_given():
  assert parse_arg("runlocal,num_games=5", num_games=0, runlocal=False).given == ("runlocal", "num_games")
  assert parse_arg(None, num_games=0).given == ()


def _load(name: str):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, "experiments/configs", name))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("name, section, local", [("expert_eval.py", "expert", 12), ("agent_eval.py", "eval", 36)])
def test_runlocal_keeps_an_explicit_num_games(name, section, local):
  get = _load(name).get_config
  assert get("runlocal")[section].num_games == local
  assert get("runlocal,num_games=5")[section].num_games == 5
  assert get("num_games=5,runlocal")[section].num_games == 5
  assert get("num_games=0,runlocal")[section].num_games == 0    # 0 = every game, asked for explicitly


@pytest.mark.parametrize("field, value", [("max_steps", 0), ("max_steps", -3), ("step_timeout", 0.0),
                                          ("step_timeout", -1.0), ("step_timeout", float("nan")),
                                          ("num_workers", 0), ("num_slots", 0), ("source", "somewhere"),
                                          ("engine", "gym")])
def test_check_env_refuses_each_bad_value_in_one_line(field, value):
  with pytest.raises(UserError, match=f"env.{field}=") as e:
    check_env(env_config(**{field: value}))
  assert "\n" not in str(e.value)


def test_check_env_accepts_the_defaults_and_edges():
  check_env(env_config())
  check_env(env_config(max_steps=1, num_workers=1, num_slots=1, step_timeout=0.5, source="generated"))
  check_env(env_config(engine="textworld"))


def test_a_negative_dagger_branch_cap_is_refused(tmp_path):
  from mpr.stages import bc
  config = _load("bc_tiny.py").get_config()
  config.bc.dagger.branches = -1
  with pytest.raises(UserError, match="branches must be >= 0"):
    bc.run(config, str(tmp_path))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments/configs/*.py"))))
def test_every_config_instantiates(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(None)
  import launch
  assert c.stages and all(s in launch.STAGES for s in c.stages)
  assert c.env.max_steps == 50


def _tiny_checkpoint(dst, fixture: str) -> str:
  """A random checkpoint of the fixture's architecture with a 256-token byte-level tokenizer."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
  for name in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(ROOT, "tests", "fixtures", fixture, name), dst / name)
  tok = tokenizers.Tokenizer(models.BPE({t: i for i, t in enumerate(pre_tokenizers.ByteLevel.alphabet())}, []))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.save(str(dst / "tokenizer.json"))
  eos = sorted(pre_tokenizers.ByteLevel.alphabet())[0]        # any byte stands in for the EOS token
  (dst / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
  return str(dst)


@pytest.mark.parametrize("model, fixture, mode", [("qwen3-8b", "qwen3_tied", "generate"),
                                                 ("r1-llama-8b", "llama3_scaled", "score")])
def test_paper_config_runs_on_a_tiny_checkpoint_of_its_architecture(tmp_path, alfworld_data, model, fixture, mode):
  """The paper config on a 2 × 4 ("data", "model") mesh of forced CPU devices: convert writes both
  tiers once (the low one by GPTQ, calibrated on expert contexts), collect serves them for two steps:
  both score the commands, or (generate mode) both read the acting tier's generated tokens; the low
  one embeds."""
  import subprocess
  import sys
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  config = os.path.join(ROOT, "experiments/configs/dmr_paper.py") + \
      f":model={model},path={_tiny_checkpoint(ckpt, fixture)},workers=1,slots=2,mp=4"
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}

  def launch(workdir, stages):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch.py"), "--workdir", str(workdir), "--config", config,
         f"--config.stages={stages}", "--config.collect.games=1", "--config.collect.val_games=1",
         "--config.convert.calib_games=2", "--config.convert.segments=4", "--config.convert.seq_len=128",
         "--config.env.max_steps=2", "--config.agent.budget=3072", "--config.model.max_seq_len=4096",
         f"--config.agent.mode={mode}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)

  p = launch(tmp_path / "run", "('convert','collect')")
  assert p.returncode == 0, p.stderr[-3000:]
  m = json.load(open(tmp_path / "run" / "collect" / "metrics.json"))
  assert json.load(open(tmp_path / "run" / "collect" / "provenance.json"))["runs"][0]["devices"] == 8
  converted = json.load(open(tmp_path / "run" / "convert" / "metrics.json"))
  assert converted["int4-gptq"]["bytes"] < converted["bf16"]["bytes"] / 2
  assert json.load(open(tmp_path / "run" / "collect" / "inputs.json"))["stage convert"]    # it read them
  if mode == "score":     # a tier lost after a kill is converted again; the one written is kept
    shutil.rmtree(tmp_path / "run" / "convert" / "bf16")
    os.remove(tmp_path / "run" / "convert" / "metrics.json")
    again = launch(tmp_path / "run", "('convert',)")
    assert again.returncode == 0, again.stderr[-3000:]
    redo = json.load(open(tmp_path / "run" / "convert" / "metrics.json"))
    assert redo["bf16"]["seconds"] is not None and redo["int4-gptq"]["seconds"] is None
  # Listed after a stage that serves the model, convert is refused before any episode.
  late = launch(tmp_path / "late", "('collect','convert')")
  assert late.returncode == 2 and "list it before collect" in late.stderr, late.stderr[-2000:]
  assert m["train"]["steps"] == 2 and m["train"]["embed_dim"] == 64 and m["train"]["d_mean"] >= 0
  steps = [json.loads(line)["steps"] for line in open(tmp_path / "run" / "collect" / "episodes_train.jsonl")]
  assert all((s.get("token_labels") is not None) == (mode == "generate") for e in steps for s in e)
