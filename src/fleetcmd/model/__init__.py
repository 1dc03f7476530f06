"""Shared vocabulary: tasks, commands, statuses (`status`), the command catalog (`catalog`),
records (`records`) and group configuration merging (`config`).

Kept import-light on purpose: the agent imports `model.config` and `model.status` and must not
pay for pydantic."""
