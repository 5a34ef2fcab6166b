"""A training-time entanglement probe: every ``every`` steps, measure a fixed sample of pairs.

``ProbeHook(features, batch_fn, every, pairs, params)(model, step)`` returns ``None`` unless ``every > 0`` and
``step % every == 0``; then it returns ``probe/``-prefixed means over the first ``pairs`` features (see
:mod:`tandem.probes.entanglement` for the quantities and their cost). It uses ``torch.autograd.grad`` only, so
``.grad`` (and so the optimizer's pending gradients), the weights, the train/eval mode and ``requires_grad``
are all left as they were.
"""

from __future__ import annotations

from tandem.probes.entanglement import DEFAULT_CHUNK_NUMEL, entanglement_stats, summarize

KEYS = {  # metric name -> summarize() key
    "probe/mean_dot": "mean_dot",
    "probe/mean_cosine": "mean_cosine",
    "probe/median_cosine": "median_cosine",
    "probe/frac_chosen_falls": "frac_chosen_falls",
    "probe/frac_rejected_rises": "frac_rejected_rises",
    "probe/logp_w": "mean_logp_w",
    "probe/logp_l": "mean_logp_l",
    "probe/norm_w": "mean_norm_w",
    "probe/norm_l": "mean_norm_l",
}


class ProbeHook:
    def __init__(self, features: list[dict], batch_fn, every: int = 0, pairs: int = 8, params: str = "all",
                 ratio: float = 1.0, chunk_numel: int = DEFAULT_CHUNK_NUMEL):
        if every < 0 or pairs < 1:
            raise ValueError(f"probe: every must be >= 0 and pairs >= 1, got every={every}, pairs={pairs}")
        self.features = [{k: v for k, v in f.items() if not k.startswith("ref_")} for f in features[:pairs]]
        self.batch_fn, self.every, self.params = batch_fn, every, params
        self.ratio, self.chunk_numel = ratio, chunk_numel

    def due(self, step: int) -> bool:
        return self.every > 0 and bool(self.features) and step % self.every == 0

    def __call__(self, model, step: int) -> dict | None:
        if not self.due(step):
            return None
        rows = entanglement_stats(model, self.features, self.batch_fn, params=self.params, ratio=self.ratio,
                                  chunk_numel=self.chunk_numel)
        s = summarize(rows)
        return {k: float(s[v]) for k, v in KEYS.items()}
