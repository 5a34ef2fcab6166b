"""tandem's offline losses against TRL's own code on the same inputs: max abs differences.

    .venv/bin/pip install 'trl>=0.20'        # the bench extra
    .venv/bin/python benchmarks/trl_losses.py [--pairs 64] [--seed 0]

What runs on TRL's side is TRL's code, not a transcription of it:

* DPO, every ``loss_type`` tandem has: ``DPOTrainer._compute_loss`` (TRL 1.16 computes every loss inline there), called on
  a stand-in ``self`` (precomputed reference log-probs, one loss type) and a stand-in model whose ``log_probs`` are the
  per-sequence log-probs (one completion token each), so the policy and reference log-probs are exactly the numbers
  tandem's ``pair_loss`` gets.
* KTO: ``KTOTrainer._compute_loss`` the same way (labels, reference log-probs, the KL completions' log-probs), against
  tandem's ``kto_losses`` + ``kl_estimate``.
* ORPO: ``ORPOTrainer.concatenated_forward`` (a real tiny Llama: the NLL over prompt + response and the mean response
  log-probs) and ``odds_ratio_loss``, against tandem's ``ORPO(nll_on="prompt_response")`` on the same pairs.
* Reward margin: ``RewardTrainer.compute_loss`` (a real tiny Llama reward model, right-padded pairs with a ``margin``
  column) against tandem's ``Reward`` on the same pairs collated by tandem.

Prints one line per loss with the max abs difference of the loss (per-pair losses are averaged the same way on both
sides) and the TRL version; exits 1 if a difference exceeds 1e-5. ``tests/test_trl_parity.py`` runs the same functions
(skipped when trl is not importable).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from types import SimpleNamespace

import torch

TOL = 1e-5
DPO_TYPES = ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
             "exo_pair")
# label smoothing where TRL 1.16 reads it; its ``sigmoid`` ignores ``label_smoothing`` (tandem's is cDPO's, as TRL's was
# before 1.0: the same at 0, compared there), so ``sigmoid`` is compared without it
SMOOTHING = {"robust": 0.1, "exo_pair": 1e-3}


class _Acc:
    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def _stub(**kw) -> SimpleNamespace:
    """A stand-in ``self`` for TRL's trainer methods: what they read, nothing else."""
    base = {"model": SimpleNamespace(training=True), "accelerator": _Acc(), "aux_loss_enabled": False,
            "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)}, "_total_train_tokens": 0, "_tp_size": 1}
    return SimpleNamespace(**{**base, **kw})


def _one_token_model(seq_logps: torch.Tensor):
    """A stand-in model: every sequence is [prompt token, completion token] and its completion's log-prob is the given
    number (what TRL's fused LM head returns as ``log_probs``)."""

    def model(**kw):
        n = seq_logps.shape[0]
        lp = seq_logps.reshape(n, 1)
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp),
                               is_top1=torch.zeros_like(lp, dtype=torch.bool))

    return model


def _one_token_inputs(n: int) -> dict:
    return {"input_ids": torch.ones(n, 2, dtype=torch.long), "attention_mask": torch.ones(n, 2, dtype=torch.long),
            "completion_mask": torch.tensor([[0, 1]] * n)}


def dpo_case(pairs: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = -torch.rand(2, pairs, generator=g, dtype=torch.float64) * 20 - 1
    pol = ref + torch.randn(2, pairs, generator=g, dtype=torch.float64) * 2
    return {"pc": pol[0], "pr": pol[1], "ref_c": ref[0], "ref_r": ref[1]}


def dpo_diff(loss_type: str, case: dict, beta: float = 0.3) -> float:
    """|TRL's DPO loss - tandem's| for one loss type on the case's log-probs."""
    from trl import DPOTrainer

    from tandem.objectives.dpo_losses import pair_loss

    eps = SMOOTHING.get(loss_type, 0.0)
    me = SimpleNamespace(ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
                         loss_weights=[1.0], beta=beta, label_smoothing=eps, use_weighting=False, args=SimpleNamespace())
    inputs = {**_one_token_inputs(2 * len(case["pc"])), "ref_chosen_logps": case["ref_c"],
              "ref_rejected_logps": case["ref_r"]}
    trl = DPOTrainer._compute_loss(_stub(**vars(me)), _one_token_model(torch.cat([case["pc"], case["pr"]])), inputs, False)
    ours = pair_loss(case["pc"] - case["ref_c"], case["pr"] - case["ref_r"], beta, loss_type, eps).mean()
    return float((trl - ours).abs())


def kto_case(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = -torch.rand(2, n, generator=g, dtype=torch.float64) * 20 - 1
    pol = ref + torch.randn(2, n, generator=g, dtype=torch.float64) * 2
    pol[1] += 1.0  # a positive KL estimate (the clamp at 0 does not hide it)
    label = torch.rand(n, generator=g) < 0.5
    label[0], label[1] = True, False
    return {"logp": pol[0], "ref": ref[0], "kl_logp": pol[1], "ref_kl": ref[1], "label": label}


def kto_diff(case: dict, beta: float = 0.2, dw: float = 1.3, uw: float = 0.8, kl_shift: float = 0.0) -> float:
    """|TRL's KTO loss - tandem's|; ``kl_shift`` moves the KL completions' log-probs (negative: a clamped estimate)."""
    from trl import KTOTrainer

    from tandem.objectives.kto import kl_estimate, kto_losses

    kl_logp = case["kl_logp"] + kl_shift
    me = _stub(loss_type="kto", calculate_KL=True, precompute_ref_logps=True, beta=beta, desirable_weight=dw,
               undesirable_weight=uw, _compute_kl_logps=lambda model, batch: kl_logp)
    n = len(case["logp"])
    inputs = {**_one_token_inputs(n), "label": case["label"], "ref_logps": case["ref"], "ref_KL_logps": case["ref_kl"]}
    trl = KTOTrainer._compute_loss(me, _one_token_model(case["logp"]), inputs, False)
    z = kl_estimate(kl_logp, case["ref_kl"])
    ours = kto_losses(case["logp"] - case["ref"], case["label"], z, beta, dw, uw).mean()
    return float((trl - ours).abs())


def _tiny(kind: str, seed: int = 0):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=False,
                      **({"num_labels": 1} if kind == "reward" else {}))
    torch.manual_seed(seed)
    return (LlamaForSequenceClassification if kind == "reward" else LlamaForCausalLM)(cfg).eval()


def _pairs(n: int, seed: int) -> list[dict]:
    """Preference features (tandem's encoding: prompt unlabelled, response + EOS labelled), token ids 3..63."""
    g = torch.Generator().manual_seed(seed)

    def ids(k):
        return torch.randint(3, 64, (k,), generator=g).tolist()

    out = []
    for _ in range(n):
        p = [1] + ids(int(torch.randint(2, 6, (1,), generator=g)))
        c, r = ids(int(torch.randint(1, 5, (1,), generator=g))) + [2], ids(int(torch.randint(1, 5, (1,), generator=g))) + [2]
        out.append({"chosen_input_ids": p + c, "chosen_labels": [-100] * len(p) + c,
                    "rejected_input_ids": p + r, "rejected_labels": [-100] * len(p) + r,
                    "margin": float(torch.rand(1, generator=g)) * 3 - 1})
    return out


def _right_padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    return ids, torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])


def orpo_diff(pairs: list[dict], lam: float = 0.1) -> float:
    """|TRL's ORPO loss (NLL over prompt + response, odds ratio) - tandem's ``ORPO(nll_on="prompt_response")``|."""
    from trl.experimental.orpo import ORPOTrainer

    from tandem.data.collate import collate
    from tandem.objectives.orpo import ORPO

    model = _tiny("lm")
    batch = {}
    for side in ("chosen", "rejected"):
        ids, mask = _right_padded([f[f"{side}_input_ids"] for f in pairs], 0)
        labels, _ = _right_padded([f[f"{side}_labels"] for f in pairs], -100)
        batch.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels})
    me = _stub(is_encoder_decoder=False, padding_value=0, label_pad_token_id=-100, beta=lam,
               concatenated_inputs=ORPOTrainer.concatenated_inputs, get_batch_logps=ORPOTrainer.get_batch_logps)
    with torch.no_grad():
        c_avg, r_avg, _, _, nll = ORPOTrainer.concatenated_forward(me, model, batch)
        losses = ORPOTrainer.odds_ratio_loss(me, c_avg, r_avg)[0]
        trl = nll - losses.mean()
        ours, _ = ORPO(lam=lam, nll_on="prompt_response")(model, collate(pairs))
    return float((trl - ours).abs())


def reward_margin_diff(pairs: list[dict]) -> float:
    """|TRL's RewardTrainer loss with a margin column - tandem's ``Reward``| on the same pairs."""
    from trl import RewardTrainer

    from tandem.data.collate import collate
    from tandem.objectives.reward import Reward

    model = _tiny("reward")
    ids, mask = _right_padded([f["chosen_input_ids"] for f in pairs] + [f["rejected_input_ids"] for f in pairs], 0)
    inputs = {"input_ids": ids, "attention_mask": mask, "margin": torch.tensor([f["margin"] for f in pairs])}
    me = _stub(args=SimpleNamespace(center_rewards_coefficient=None))
    with torch.no_grad():
        trl = RewardTrainer.compute_loss(me, model, inputs)
        ours, _ = Reward()(model, collate(pairs, mode="pad"))
    return float((trl - ours).abs())


def all_diffs(pairs: int = 64, seed: int = 0) -> dict[str, float]:
    """Max abs difference per loss over a few seeds (loss means over ``pairs`` pairs or examples)."""
    out: dict[str, float] = {}
    for s in range(seed, seed + 3):
        case = dpo_case(pairs, s)
        for lt in DPO_TYPES:
            out[f"dpo/{lt}"] = max(out.get(f"dpo/{lt}", 0.0), dpo_diff(lt, case))
        kcase = kto_case(pairs, s)
        out["kto"] = max(out.get("kto", 0.0), kto_diff(kcase))
        out["kto (KL clamped at 0)"] = max(out.get("kto (KL clamped at 0)", 0.0), kto_diff(kcase, kl_shift=-5.0))
        feats = _pairs(min(pairs, 8), s)
        out["orpo nll_on=prompt_response"] = max(out.get("orpo nll_on=prompt_response", 0.0), orpo_diff(feats))
        out["reward margin"] = max(out.get("reward margin", 0.0), reward_margin_diff(feats))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import trl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        diffs = all_diffs(a.pairs, a.seed)
    finally:
        torch.set_num_threads(threads)
    print(f"TRL {trl.__version__}, torch {torch.__version__}; max abs difference of the loss, 3 seeds x {a.pairs} pairs "
          "(float64 log-probs for DPO/KTO; fp32 tiny Llama for ORPO/reward, 8 pairs)")
    for k, v in diffs.items():
        print(f"  {k:32s} {v:.3g}")
    bad = [k for k, v in diffs.items() if not v <= TOL]
    if bad:
        print(f"over {TOL}: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
