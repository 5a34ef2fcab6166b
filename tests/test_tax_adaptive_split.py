"""Issue 16 #4: the adaptive merge ratios are fitted on prompts disjoint from the prompts every candidate is scored
on, and both counts are recorded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tandem.pipelines.tax import adaptive_split


def cfg(**adaptive):
    a = {"enabled": True, "prompts": None, "fit_fraction": 0.5, **adaptive}
    return SimpleNamespace(seed=3, adaptive=SimpleNamespace(**a))


def test_fit_and_score_prompts_are_disjoint_and_cover_the_set():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    score, fit = adaptive_split(cfg(), prompts)
    key = lambda p: p[0]["content"]  # noqa: E731
    assert len(score) == 5 and len(fit) == 5
    assert not {key(p) for p in score} & {key(p) for p in fit}
    assert sorted(map(key, score + fit)) == sorted(map(key, prompts))
    assert adaptive_split(cfg(), prompts) == (score, fit)  # seeded


def test_no_adaptive_scores_every_prompt_and_a_too_large_fraction_is_refused():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    assert adaptive_split(cfg(enabled=False), prompts) == (prompts, [])
    with pytest.raises(ValueError, match="fit_fraction"):
        adaptive_split(cfg(fit_fraction=0.9), prompts)
