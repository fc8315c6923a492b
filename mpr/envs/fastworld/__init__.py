"""An in-process, exact and fast re-implementation of ALFWorld's TextWorld engine (see engine.py)."""
from mpr.envs.fastworld.engine import FastEnv, FastState, load_game

__all__ = ["FastEnv", "FastState", "load_game"]
