"""Model averaging against the alignment tax.

**Convention**: ``theta = (1 - alpha) * theta_0 + alpha * theta_1`` per tensor, where ``theta_0`` is the model
before preference training and ``theta_1`` the model after it. ``alpha = 1`` is the tuned model, ``alpha = 0``
the starting model. (Some tools/papers use the opposite; convert with ``1 - alpha``.)

- :mod:`~tandem.merging.lerp`: :class:`Merger`, fused in-place merges into a live model;
- :mod:`~tandem.merging.groups`: block discovery, group specs, :func:`tensor_alphas`;
- :mod:`~tandem.merging.loading`: :func:`merge_checkpoints` (``tandem merge``; loading is :mod:`tandem.models`);
- :mod:`~tandem.merging.mergekit`: equivalent mergekit YAML;
- :mod:`~tandem.merging.pareto`: Pareto front, budget pick, plot;
- :mod:`~tandem.merging.search`: global sweep, optuna per-group search, learned group ratios.
"""

from tandem.merging.groups import GroupSpecError, find_blocks, parse_group_spec, tensor_alphas
from tandem.merging.lerp import Merger, merge_into, merge_names
from tandem.merging.loading import merge_checkpoints
from tandem.merging.pareto import pareto_front, pick_under_budget, plot_pareto

__all__ = [
    "GroupSpecError",
    "Merger",
    "find_blocks",
    "merge_checkpoints",
    "merge_into",
    "merge_names",
    "pareto_front",
    "parse_group_spec",
    "pick_under_budget",
    "plot_pareto",
    "tensor_alphas",
]
