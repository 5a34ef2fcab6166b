"""Pipelines: a recipe (or command arguments) -> built objects -> a run of the engine, evaluation, tax or probe."""
