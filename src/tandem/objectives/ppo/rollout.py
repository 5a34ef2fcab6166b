"""PPO rollouts: sample responses for a batch of prompts, then score them token by token.

A rollout of ``B`` prompts:

1. **Sampling** (:func:`sample`, i.e. :func:`tandem.models.sampling.sample_ids`): the prompts are left-padded
   into one batch and tandem's decode loop samples with the KV cache (``use_cache=True``), ``temperature`` /
   ``top_p``, at most ``max_new_tokens`` new tokens, stopping at EOS. A response is the new tokens up to and including the first EOS (all of them when no
   EOS came). Sampling is seeded inside :func:`torch.random.fork_rng`, so the caller's RNG is untouched.
2. **Sequences** (:func:`response_features`): ``prompt + response`` with labels on the response tokens, the
   SFT feature layout of docs/architecture.md, so the engine's ``batch_fn`` packs them.
3. **Per-token quantities** (:func:`token_stats`): one forward of the policy (no grad) gives the log-prob of
   every response token under ``softmax(logits / temperature)`` -- the distribution it was sampled from
   (top-p truncation is not modelled, as usual) -- and the hidden state that predicted it. The reference
   log-probs come from the same forward on the reference (:func:`reference_token_logps`): with LoRA the policy
   itself inside peft's ``disable_adapter()`` (the base weights, no second copy), otherwise a frozen copy of
   the policy. Values come from the critic (``tandem.objectives.ppo.critic``).
4. **Reward**: one score per response from a reward model (:class:`ModelReward`, ``score`` head at the last
   token, :func:`tandem.objectives.reward.sequence_rewards`) or a Python function (:class:`FunctionReward`).

Per-token tensors are returned padded to ``[B, L]`` (``L`` = longest response) with ``mask`` 1 on response
tokens, response ``b`` in columns ``0..n_b-1``.
"""

from __future__ import annotations

import contextlib

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tandem.data.encode import prompt_ids as render_prompt_ids
from tandem.data.encode import response_ids as render_response_ids
from tandem.data.messages import prompt_text
from tandem.io.callables import resolve_function
from tandem.models.sampling import sample_ids
from tandem.objectives.logprobs import IGNORE, _forward_hidden

__all__ = ["FunctionReward", "ModelReward", "Rollout", "TokenIndex", "collect", "gather_hidden",
           "reference_token_logps", "response_features", "sample", "token_index",
           "token_logps_from_hidden", "token_stats"]

# ---------------------------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample(model, prompts: list[list[int]], pad_id: int, eos: list[int], temperature: float, top_p: float,
           max_new_tokens: int, seed: int, use_cache: bool = True) -> list[list[int]]:
    """One sampled response (token ids, ending with the first EOS when one came) per prompt, all in one batch
    (:func:`tandem.models.sampling.sample_ids`)."""
    if not prompts:
        raise ValueError("ppo sample: every prompt needs at least one token")
    return sample_ids(model, prompts, pad_id=pad_id, eos=eos, temperature=temperature, top_p=top_p,
                      max_new_tokens=max_new_tokens, seed=seed, use_cache=use_cache)


def response_features(prompts: list[list[int]], responses: list[list[int]]) -> list[dict]:
    """``{"input_ids": prompt + response, "labels": [-100] * len(prompt) + response}`` per pair."""
    return [{"input_ids": p + r, "labels": [IGNORE] * len(p) + r} for p, r in zip(prompts, responses)]


# ------------------------------------------------------------------------------------ per-token quantities


@dataclass
class TokenIndex:
    """Where the response tokens of a packed batch are.

    ``flat[N]`` indexes ``hidden[:, :-1].reshape(-1, H)`` (the state that predicts each labelled token),
    ``seq[N]`` / ``col[N]`` give its response and column, ``target[N]`` the token id; ``B, L`` the padded shape.
    """

    flat: torch.Tensor
    seq: torch.Tensor
    col: torch.Tensor
    target: torch.Tensor
    B: int
    L: int

    def pad(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``[N] -> [B, L]`` (``fill`` off the responses)."""
        out = torch.full((self.B, self.L), fill, dtype=x.dtype, device=x.device)
        out[self.seq, self.col] = x
        return out

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L] -> [N]`` in the order of this index."""
        return x[self.seq, self.col]

    def mask(self, dtype=torch.float32) -> torch.Tensor:
        m = torch.zeros((self.B, self.L), dtype=dtype, device=self.seq.device)
        m[self.seq, self.col] = 1
        return m


def token_index(batch: dict, prompt_lens: torch.Tensor, L: int | None = None) -> TokenIndex:
    """The :class:`TokenIndex` of a batch of ``prompt + response`` sequences (``prompt_lens[S]`` per sequence)."""
    target = batch["labels"][:, 1:]
    sel = target != IGNORE
    R, T1 = target.shape
    flat = torch.arange(R * T1, device=target.device).reshape(R, T1)[sel]
    seq = batch["seq_ids"][:, 1:][sel]
    col = batch["position_ids"][:, 1:][sel] - prompt_lens.to(seq.device)[seq]
    B = int(prompt_lens.numel())
    if L is None:
        L = int(col.max()) + 1
    return TokenIndex(flat=flat, seq=seq, col=col, target=target[sel], B=B, L=L)


def gather_hidden(hidden: torch.Tensor, index: TokenIndex) -> torch.Tensor:
    """``[N, H]``: the hidden states that predict the response tokens."""
    return hidden[:, :-1].reshape(-1, hidden.shape[-1])[index.flat]


def token_logps_from_hidden(model, h: torch.Tensor, index: TokenIndex, temperature: float = 1.0,
                            entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp[N], entropy[N] or None)`` of the response tokens under ``softmax(lm_head(h) / temperature)``."""
    from tandem.objectives.ppo.ppo_math import entropy_from_logits

    logits = model.get_output_embeddings()(h).float() / temperature
    logp = -F.cross_entropy(logits, index.target, reduction="none")
    ent = entropy_from_logits(logits.detach()) if entropy else None
    return logp, ent


def token_stats(model, batch: dict, index: TokenIndex, temperature: float = 1.0, entropy: bool = False):
    """``(logp[N], entropy[N] or None, hidden[N, H])`` of the policy on the response tokens (grad as the caller)."""
    h = gather_hidden(_forward_hidden(model, batch), index)
    logp, ent = token_logps_from_hidden(model, h, index, temperature, entropy)
    return logp, ent, h


@torch.no_grad()
def reference_token_logps(policy, reference, batch: dict, index: TokenIndex, temperature: float = 1.0) -> torch.Tensor:
    """``logp_ref[N]`` under ``reference``: a frozen model, or an :class:`AdapterReference` (the policy with other
    trainable weights swapped in)."""
    if isinstance(reference, AdapterReference):
        with reference.applied(policy):
            return token_stats(policy, batch, index, temperature)[0]
    return token_stats(reference, batch, index, temperature)[0]


class AdapterReference:
    """The reference policy of a LoRA run: the policy with its trainable (adapter) tensors replaced by ``tensors``
    (the stage-start or initial values) for the duration of a reference forward; no second model in memory."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    @contextlib.contextmanager
    def applied(self, policy):
        params = dict(policy.named_parameters())
        names = list(self.tensors)
        live = [params[n] for n in names]
        with torch.no_grad():
            kept = [p.detach().clone() for p in live]
            torch._foreach_copy_(live, [self.tensors[n].to(p.device, p.dtype) for n, p in zip(names, live)])
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(live, kept)


# ------------------------------------------------------------------------------------------------- reward


class FunctionReward:
    """``score_b = fn(prompt_text, response_text)`` (response text without EOS, special tokens skipped)."""

    def __init__(self, fn):
        self.fn = resolve_function(fn)

    def __call__(self, prompts: list[dict], responses: list[list[int]], texts: list[str], device) -> torch.Tensor:
        scores = [float(self.fn(prompt_text(p["prompt"]), t)) for p, t in zip(prompts, texts)]
        return torch.tensor(scores, dtype=torch.float32, device=device)


class ModelReward:
    """A frozen ``AutoModelForSequenceClassification(num_labels=1)``: ``score`` at the last token of prompt+response.

    With the policy's vocabulary the policy's token ids are scored as sampled (the response keeps its EOS when
    it has one). With another tokenizer the prompt messages and the response text are re-encoded with the
    reward model's tokenizer (``tandem.data.encode``; the response then always ends with EOS).
    """

    def __init__(self, model, tokenizer, same_vocab: bool, batch_fn, batch_size: int = 16):
        self.model, self.tokenizer, self.same_vocab = model.eval(), tokenizer, same_vocab
        self.batch_fn, self.batch_size = batch_fn, batch_size
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, prompts: list[dict], responses: list[list[int]], texts: list[str], device) -> torch.Tensor:
        from tandem.models.scoring import sequence_rewards

        if self.same_vocab:
            seqs = [p["prompt_ids"] + r for p, r in zip(prompts, responses)]
        else:
            tok = self.tokenizer
            seqs = [render_prompt_ids(tok, p["prompt"]) + render_response_ids(tok, t) for p, t in zip(prompts, texts)]
        out = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = [{"input_ids": s, "labels": [IGNORE] * len(s)} for s in seqs[i:i + self.batch_size]]
            out.append(sequence_rewards(self.model, self.batch_fn(chunk), len(chunk)))
        return torch.cat(out).float().to(device)


# ------------------------------------------------------------------------------------------------ rollout


@dataclass
class Rollout:
    """One PPO batch: sequences, their padded per-token tensors ``[B, L]`` and per-response scores ``[B]``."""

    features: list[dict]
    prompt_lens: torch.Tensor
    mask: torch.Tensor
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor
    score: torch.Tensor
    ended: torch.Tensor  # [B] bool: the response ends with EOS
    texts: list[str]
    gen_tokens: int
    gen_seconds: float
    score_seconds: float


@torch.no_grad()
def collect(policy, tokenizer, prompts: list[dict], *, batch_fn, critic, reference, reward, temperature: float,
            top_p: float, max_new_tokens: int, seed: int, pad_id: int, eos: list[int]) -> Rollout:
    """Sample, then score one batch of prompt features (``{"prompt_ids", "prompt"}``); see the module docstring."""
    p_ids = [p["prompt_ids"] for p in prompts]
    t0 = time.perf_counter()
    responses = sample(policy, p_ids, pad_id, eos, temperature, top_p, max_new_tokens, seed)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    eos_set = set(eos)
    ended = torch.tensor([bool(r) and r[-1] in eos_set for r in responses])
    texts = [tokenizer.decode([t for t in r if t not in eos_set], skip_special_tokens=True) for r in responses]
    feats = response_features(p_ids, responses)
    batch = batch_fn(feats)
    device = batch["input_ids"].device
    prompt_lens = torch.tensor([len(p) for p in p_ids], device=device)
    index = token_index(batch, prompt_lens, L=max(len(r) for r in responses))
    was = policy.training
    policy.eval()
    try:
        logp, _, h = token_stats(policy, batch, index, temperature)
        ref = reference_token_logps(policy, reference, batch, index, temperature)
        values = critic.values(batch, index, h)
    finally:
        policy.train(was)
    score = reward(prompts, responses, texts, device)
    t2 = time.perf_counter()
    return Rollout(
        features=feats, prompt_lens=prompt_lens, mask=index.mask(), logp=index.pad(logp.float()),
        ref_logp=index.pad(ref.float()), values=index.pad(values.float()), score=score.float(),
        ended=ended.to(device), texts=texts, gen_tokens=sum(len(r) for r in responses), gen_seconds=t1 - t0,
        score_seconds=t2 - t1,
    )
