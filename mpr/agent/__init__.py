"""The agent: prompt formats and histories (prompt), the batched multi-precision policy (agent).

The only package that knows both ALFWorld (through mpr.envs records) and models (mpr.models).
"""
