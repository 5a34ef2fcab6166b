"""tandem's offline losses against TRL's own code on the same inputs (benchmarks/trl_losses.py): DPO's loss types, KTO
with its KL estimate (also clamped at 0), ORPO's NLL over prompt + response, the reward model's margin. Skipped when trl
(the bench extra) is not installed."""

from __future__ import annotations

import pytest
from helpers_bench import load_benchmark

trl = pytest.importorskip("trl")
B = load_benchmark("trl_losses")
TOL = 1e-5


@pytest.mark.parametrize("loss_type", B.DPO_TYPES)
def test_dpo_loss_types_match_trl(loss_type):
    for seed in (0, 1):
        assert B.dpo_diff(loss_type, B.dpo_case(32, seed)) < TOL, (trl.__version__, loss_type, seed)


def test_kto_matches_trl_with_a_positive_and_a_clamped_kl_estimate():
    from tandem.objectives.kto import kl_estimate

    case = B.kto_case(32, 0)
    assert float(kl_estimate(case["kl_logp"], case["ref_kl"])) > 0.1  # the KL term is in play
    assert float(kl_estimate(case["kl_logp"] - 5.0, case["ref_kl"])) == 0.0  # and clamped at 0
    assert B.kto_diff(case) < TOL
    assert B.kto_diff(case, kl_shift=-5.0) < TOL
    assert B.kto_diff(case, beta=1.0, dw=1.0, uw=2.5) < TOL


def test_orpo_prompt_response_nll_matches_trl():
    assert B.orpo_diff(B._pairs(4, 0)) < TOL


def test_reward_margin_matches_trl():
    assert B.reward_margin_diff(B._pairs(4, 1)) < TOL


def test_the_parity_checks_can_fail():
    """A wrong formula on tandem's side is caught: tandem's sigmoid loss with a beta 1% off."""
    case = B.dpo_case(8, 0)
    assert B.dpo_diff("sigmoid", case, beta=0.3) < TOL
    from tandem.objectives import dpo_losses

    orig = dpo_losses.LOSSES["sigmoid"]
    dpo_losses.LOSSES["sigmoid"] = lambda rc, rr, beta, eps: orig(rc, rr, beta * 1.01, eps)
    try:
        assert B.dpo_diff("sigmoid", case, beta=0.3) > 1e-4
    finally:
        dpo_losses.LOSSES["sigmoid"] = orig


def test_the_script_prints_every_loss_and_exits_0(capsys):
    assert B.main(["--pairs", "8"]) == 0
    out = capsys.readouterr().out
    assert f"TRL {trl.__version__}" in out
    for name in ("dpo/exo_pair", "dpo/apo_down", "kto", "orpo nll_on=prompt_response", "reward margin"):
        assert name in out
