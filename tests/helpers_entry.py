"""The public entry points the behaviour tests drive, imported in ONE place.

When the engine moves (``tandem.engine.run.train`` -> ``tandem.pipelines.train.train``, ``engine.compare`` ->
``pipelines.compare``, ``cli.eval_cmd.run_eval`` -> ``pipelines.evaluate``), only these imports change.

- ``train(recipe, resume=False, overwrite=False, progress=None) -> summary dict``
- ``compare(recipe_path, methods, seeds, out_dir, overrides=None, resume=False, x_key=None, y_key=None) -> rows``
- ``run_eval(model_dir, eval_cfg, out_dir, metrics, temperatures) -> results dict``
- ``load_role_features(recipe, role, tokenizer) -> (train features, val features, info)``: a role's encoded data
- ``cli_app``: the typer app of the ``tandem`` command
- ``write_report(run_or_compare_dir, out=None, x_key=None, y_key=None, title=None) -> report.md path``
- ``TRAIN_SCRIPT``: a ``python -c`` program ``RECIPE.yaml fresh|resume`` that trains in a child process (for the
  SIGKILL fault injection ``TANDEM_FAULT_KILL_AFTER_STEP``)
"""

from __future__ import annotations

from tandem.cli.main import app as cli_app
from tandem.report import write_report
from tandem.pipelines.compare import compare
from tandem.pipelines.evaluate import run_eval
from tandem.pipelines.train import load_role_features, train

TRAIN_SCRIPT = """
import sys
from tandem.config.recipe import load_recipe
from tandem.pipelines.train import train
train(load_recipe(sys.argv[1]), resume=sys.argv[2] == "resume")
"""

__all__ = ["TRAIN_SCRIPT", "cli_app", "compare", "run_eval", "load_role_features", "train", "write_report"]
