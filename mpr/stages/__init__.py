"""Pipeline stages: plain `run(config, stage_dir) -> metrics` functions, registered in launch.py.

Each stage module names the top-level config sections it depends on (`CONFIG_KEYS`); the runner
uses them to decide whether a finished stage folder can be reused for the current config.
"""
