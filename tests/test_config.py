import glob
import importlib.util
import os

import pytest

from mpr.config_util import parse_arg
from mpr.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types_and_flags():
  a = parse_arg("split=valid_unseen,num_games=7,runlocal", split="valid_seen", num_games=0, runlocal=False)
  assert (a.split, a.num_games, a.runlocal) == ("valid_unseen", 7, True)


@pytest.mark.parametrize("arg", ["nope=1", "num_games=seven", "runlocal=maybe"])
def test_parse_arg_rejects_bad_input(arg):
  with pytest.raises(UserError):
    parse_arg(arg, num_games=0, runlocal=False)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments/configs/*.py"))))
def test_every_config_instantiates(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(None)
  import launch
  assert c.stages and all(s in launch.STAGES for s in c.stages)
  assert c.env.max_steps == 50
