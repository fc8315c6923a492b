"""launch.py end to end: bad input fails in one line with exit 2; a killed run resumes to identical numbers."""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "experiments/configs/expert_eval.py")


def _launch(args, env=None, **kw):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def _assert_one_line_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  for n in needles:
    assert n in errors[0], errors[0]


@pytest.mark.parametrize("args, needle", [
    (["--config.expert.bogus=1"], "bogus"),
    (["--config.env.max_steps=lots"], "max_steps"),
    (["--config.env.source=somewhere", "--config.expert.splits=('valid_seen',)"], "env.source"),
    (["--config.expert.name=oracle"], "oracle"),
    (["--config.stages=('nope',)"], "nope"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, args, needle, alfworld_data):
  _assert_one_line_error(_launch(["--config", CFG, "--workdir", str(tmp_path), *args]), needle)


@pytest.mark.parametrize("field, value", [("max_steps", "0"), ("step_timeout", "0"), ("num_workers", "0"),
                                          ("num_slots", "0"), ("engine", "gym")])
def test_bad_env_value_is_one_line_exit_2_before_any_work(tmp_path, field, value):
  _assert_one_line_error(_launch(["--config", CFG, "--workdir", str(tmp_path), f"--config.env.{field}={value}"]),
                         f"env.{field}={value if value.isdigit() else repr(value)}")
  assert not os.listdir(tmp_path)      # no stage folder (or config.json) to refuse a corrected re-run


def test_negative_num_games_is_one_line_exit_2(tmp_path, alfworld_data):
  _assert_one_line_error(_launch(["--config", CFG + ":num_games=-1", "--workdir", str(tmp_path)]), "num_games")
  # Refused inside the stage: its folder goes with the refusal, so the corrected re-run is not blocked.
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("text, needle", [("this is not python", "NameError"),
                                         ("def get_config(:", "SyntaxError")])
def test_a_config_file_that_does_not_run_is_one_line(tmp_path, text, needle):
  cfg = tmp_path / "notes.py"
  cfg.write_text(text)
  _assert_one_line_error(_launch(["--config", str(cfg), "--workdir", str(tmp_path / "w")]), str(cfg), needle)


def test_a_workdir_that_is_or_lies_under_a_file_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  for workdir, needle in ((tmp_path / "file", "File exists"), (tmp_path / "file" / "sub", "Not a directory")):
    _assert_one_line_error(_launch(["--config", CFG + ":num_games=1", "--workdir", str(workdir)]), needle)


def _read_only(path, argv):
  """argv run with `path` read-only: by permissions for a user, in a private mount namespace for root
  (whom permissions do not stop)."""
  if os.geteuid() != 0:
    for d, _, files in os.walk(path):
      os.chmod(d, 0o555)
      for f in files:                  # appending to an existing file needs no write access to its folder
        os.chmod(os.path.join(d, f), 0o444)
    return argv
  ro = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'
  wrap = lambda cmd: ["unshare", "-m", "sh", "-c", ro, "sh", str(path), *cmd]
  try:
    works = subprocess.run(wrap(["sh", "-c", f'! touch "{path}/probe"']), capture_output=True).returncode == 0
  except FileNotFoundError:
    works = False
  if not works:
    pytest.skip("root without mount namespaces: no way to make a folder read-only for root")
  return wrap(argv)


@pytest.mark.parametrize("which", ["fresh", "finished", "stage folder"])
def test_a_read_only_workdir_is_one_line(tmp_path, alfworld_data, which):
  args = ["--config", CFG + ":num_games=1", "--config.env.max_steps=2", "--workdir", str(tmp_path)]
  if which != "fresh":
    assert _launch(args).returncode == 0
  ro = tmp_path / "expert_rollouts" if which == "stage folder" else tmp_path
  p = subprocess.run(_read_only(ro, [sys.executable, os.path.join(ROOT, "launch.py"), *args]), cwd=ROOT,
                     capture_output=True, text=True)
  _assert_one_line_error(p, ".lock" if which == "stage folder" else "is not writable")


def test_a_second_run_in_a_busy_workdir_fails_at_once(tmp_path, alfworld_data):
  sdir = tmp_path / "expert_rollouts"
  sdir.mkdir()
  with open(sdir / ".lock", "a") as held:
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)     # as the first run holds it while it plays
    _assert_one_line_error(_launch(["--config", CFG + ":num_games=1", "--workdir", str(tmp_path)]), "in use")
  assert not (sdir / "config.json").exists()


def test_unknown_key_near_miss_is_a_clean_line(tmp_path):
  p = _launch(["--config", CFG, "--workdir", str(tmp_path), "--config.env.max_step=1"])
  _assert_one_line_error(p, "unknown config key 'max_step'", '"max_steps"')
  assert "\\n" not in p.stderr and '\\"' not in p.stderr


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_exits_0(flag):
  p = _launch([flag])
  assert p.returncode == 0, p.stderr[-2000:]
  assert "--workdir" in p.stdout


def test_bad_config_arg_and_missing_file(tmp_path):
  _assert_one_line_error(_launch(["--config", CFG + ":splitt=x", "--workdir", str(tmp_path)]), "splitt")
  _assert_one_line_error(_launch(["--config", "nowhere.py", "--workdir", str(tmp_path)]), "nowhere.py")


def test_missing_real_data_says_how_to_get_it(tmp_path):
  p = _launch(["--config", CFG, "--workdir", str(tmp_path), "--config.env.source=real"],
              env={"ALFWORLD_DATA": str(tmp_path / "empty")})
  _assert_one_line_error(p, "alfworld-download", "ALFWORLD_DATA")


def _episodes(workdir):
  with open(os.path.join(workdir, "expert_rollouts", "episodes_valid_seen.jsonl")) as f:
    return [json.loads(l) for l in f]


def _kill_after(args, workdir, log, n):
  """Starts launch.py, SIGKILLs its whole process group once `log` holds n episodes."""
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), *args, "--workdir", str(workdir)],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 240
  while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= n):
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)   # the whole group: launcher and its env workers
  proc.wait()


def test_ctrl_c_is_one_line_exit_130_and_leaves_a_resumable_log(tmp_path, alfworld_data):
  log = tmp_path / "expert_rollouts" / "episodes_valid_seen.jsonl"
  # On TextWorld (seconds a game) and with 40 games the signal lands mid-run even on loaded cores
  # (10 games once finished first there); FastEnv could finish first anyway.
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), "--config", CFG + ":num_games=40",
                           "--config.env.num_slots=2", "--config.env.engine=textworld", "--workdir", str(tmp_path)],
                          cwd=ROOT, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                          # A suite started as a background job (`make test &`) inherits SIGINT ignored,
                          # as a terminal's foreground run never does.
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.time() + 240
  while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 1):
    time.sleep(0.2)
  assert log.exists(), "no episode finished within 240 s"
  os.killpg(proc.pid, signal.SIGINT)    # as a terminal's Ctrl-C reaches the whole foreground group
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert "Traceback" not in err and err.splitlines()[-1].startswith("launch.py: interrupted"), err[-2000:]
  left = lambda: subprocess.run(["pgrep", "-a", "-g", str(proc.pid)], capture_output=True, text=True).stdout
  deadline = time.time() + 30     # multiprocessing's helper processes leave once their parent is gone
  while left() and time.time() < deadline:
    time.sleep(0.5)
  assert not left()               # no env worker outlives the run
  assert all(json.loads(l)["game"] for l in log.read_text().splitlines())


def test_kill_and_resume_gives_identical_numbers(tmp_path, alfworld_data):
  args = ["--config", CFG + ":num_games=10", "--config.env.source=real", "--config.env.num_slots=2",
          "--config.env.engine=textworld"]     # slow enough for the kill to land mid-run
  ref = tmp_path / "ref"
  p = _launch([*args, "--workdir", str(ref)])
  assert p.returncode == 0, p.stderr[-3000:]
  ref_metrics = json.load(open(ref / "expert_rollouts" / "metrics.json"))

  run = tmp_path / "run"
  _kill_after(args, run, run / "expert_rollouts" / "episodes_valid_seen.jsonl", 3)
  done_before = len(_episodes(run))
  assert 3 <= done_before < 10
  assert not (run / "expert_rollouts" / "metrics.json").exists()

  p = _launch([*args, "--workdir", str(run)])
  assert p.returncode == 0, p.stderr[-3000:]
  eps = _episodes(run)
  assert len(eps) == 10 and len({e["game"] for e in eps}) == 10   # nothing replayed twice
  metrics = json.load(open(run / "expert_rollouts" / "metrics.json"))
  for m in (metrics, ref_metrics):
    m.pop("stage_seconds")
  assert metrics == ref_metrics
  assert (run / "expert_rollouts" / "summary.md").read_text().startswith("###")

  # A finished stage is reused, not recomputed; a changed config is refused.
  p = _launch([*args, "--workdir", str(run)])
  assert p.returncode == 0 and len(_episodes(run)) == 10
  _assert_one_line_error(_launch([*args, "--workdir", str(run), "--config.env.max_steps=30"]),
                         "different config")


EVAL = os.path.join(ROOT, "experiments/configs/agent_eval.py")


def test_eval_kill_and_resume_gives_identical_episodes(tmp_path, alfworld_data):
  """The agent eval stage: killed mid-run, resumed, the same episodes step by step (actions and their
  probabilities) and success as an unbroken run: exact, although bf16's numerics depend on batch shapes."""
  args = ["--config", EVAL + ":num_games=3,precisions=bf16+int4", "--config.env.max_steps=8",
          "--config.env.num_slots=2", "--config.env.engine=textworld"]     # slow enough for the kill to land mid-run
  ref, run = tmp_path / "ref", tmp_path / "run"
  p = _launch([*args, "--workdir", str(ref)])
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| bf16 |" in p.stdout and "| int4 |" in p.stdout          # the comparison table is printed
  _kill_after(args, run, run / "eval" / "episodes_valid_seen_bf16.jsonl", 2)
  assert not (run / "eval" / "metrics.json").exists()
  p = _launch([*args, "--workdir", str(run)])
  assert p.returncode == 0, p.stderr[-3000:]
  for name in ("bf16", "int4"):
    read = lambda d: sorted((json.loads(l)["game"], [(s["action"], s["action_probs"]) for s in json.loads(l)["steps"]])
                            for l in open(d / "eval" / f"episodes_valid_seen_{name}.jsonl"))
    assert read(run) == read(ref) and len(read(run)) == 3
  got, want = (json.load(open(d / "eval" / "metrics.json"))["precisions"] for d in (run, ref))
  assert all(got[n]["summary"] == want[n]["summary"] for n in ("bf16", "int4"))


@pytest.mark.parametrize("arg, needle", [
    ("path=/nonexistent/policy", "not a folder"),
    ("tier=onnx", "unknown model tier"),
    ("precisions=bf16+int5", "int5"),
    ("mode=beam", "action mode"),
])
def test_eval_bad_input_is_one_line_exit_2(tmp_path, arg, needle, alfworld_data):
  _assert_one_line_error(_launch(["--config", f"{EVAL}:num_games=2,{arg}", "--workdir", str(tmp_path)]), needle)


def test_a_changed_model_or_game_source_is_refused_on_resume_and_reuse(tmp_path, alfworld_data):
  """Reuse is keyed on what a stage reads, not only on its config: another checkpoint under the same
  path, or ALFWORLD_DATA pointing elsewhere, must not be mixed into (or reported as) the old results."""
  from mpr.agent import models
  model = tmp_path / "policy"
  shutil.copytree(models.SHIPPED_TINY, model)
  args = ["--config", EVAL + ":num_games=1,precisions=f32", "--config.env.max_steps=2",
          f"--config.model.path={model}", "--workdir", str(tmp_path / "w")]
  p = _launch(args)
  assert p.returncode == 0, p.stderr[-3000:]
  assert _launch(args).returncode == 0                                    # same inputs: reused
  text = (model / "model.json").read_text()
  (model / "model.json").write_text(json.dumps({**json.loads(text), "made_by": "another training run"}))
  _assert_one_line_error(_launch(args), "other inputs", "model.model.json")
  (model / "model.json").write_text(text)
  assert _launch(args).returncode == 0                                    # the same model again: reused

  elsewhere = tmp_path / "data"
  shutil.copytree(alfworld_data, elsewhere)
  _assert_one_line_error(_launch(args, env={"ALFWORLD_DATA": str(elsewhere)}), "other inputs", "games.real")


def test_a_corrupt_checkpoint_is_one_clean_line(tmp_path, alfworld_data):
  from mpr.agent import models
  model = tmp_path / "policy"
  shutil.copytree(models.SHIPPED_TINY, model)
  for d, _, files in os.walk(model / "params"):
    for f in files:
      if d.endswith("/d"):
        open(os.path.join(d, f), "wb").close()     # every data file emptied
  p = _launch(["--config", EVAL + ":num_games=1,precisions=f32", f"--config.model.path={model}",
               "--workdir", str(tmp_path / "w")])
  # The damage is found before orbax reads a file, so its threads print nothing either.
  assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
  assert p.stderr.splitlines()[-1].startswith("launch.py: error:") and "corrupt checkpoint" in p.stderr.splitlines()[-1]
