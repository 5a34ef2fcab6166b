"""Reward functions with TRL's signature: ``reward_funcs`` of the online methods (GRPO, RLOO, PPO).

A recipe lists them as strings; each is one of

* ``package.module:function`` -- an importable function (``tandem.rewards.conflict:conflict_pass``);
* ``path/to/file.py:function`` -- a function in a Python file (relative paths from the working directory);
* anything else -- a reward model (a tandem reward run, a model directory or a Hub id; loaded on first use with
  :func:`tandem.models.load_reward_model`, a LoRA reward run merged). It scores ``prompt + completion`` rendered
  with its own tokenizer's chat template, ``score`` head at the last token, as TRL scores a reward model in the list.

A function is called once per rollout, batched, exactly as TRL's ``GRPOTrainer`` calls it::

    f(prompts=[...], completions=[...], completion_ids=[...], **columns) -> list[float | None]

with one entry per completion (a prompt repeats once per completion of its group). For rows whose prompt was a
string in the data (TRL's *standard* format) ``prompts`` are strings and ``completions`` the decoded texts; for
chat prompts (*conversational*) ``prompts`` are message lists and each completion is
``[{"role": "assistant", "content": text}]``. ``completion_ids`` are the sampled token ids (with the EOS token when
one came); ``columns`` are the dataset's other columns, one list each (``None`` where a row lacks the column).
TRL's ``trainer_state``, ``log_extra`` and ``log_metric`` keywords are not passed.

A function may return ``None`` for a row it does not score (NaN inside; a row no function scores is *unscorable*).
``reward_weights`` weight the functions (default 1 each); the reward of a row is the weighted sum over the
functions that scored it. A function that raises, returns something that is not a list of numbers or ``None``, or
returns the wrong number of rewards is a :class:`RewardFunctionError` naming it (one line; the step is not
applied and nothing is written after it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import numbers
import re
import sys
import types
from pathlib import Path
from typing import Callable

import torch

from tandem.io.callables import resolve_function
from tandem.models.sampling import pad_token_id

_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_FILE_SPEC = re.compile(r"^(?P<file>.+\.py):(?P<fn>[A-Za-z_]\w*)$")


class RewardFunctionError(ValueError):
    """A reward function failed or returned something unusable (the message names it)."""


def _from_file(path: str, name: str, what: str) -> Callable:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{what}: {path} not found (a 'file.py:function' entry)")
    mod_name = f"tandem_reward_{file.stem}_{hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:8]}"
    module = sys.modules.get(mod_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file: one line naming it
            del sys.modules[mod_name]
            raise ValueError(f"{what} {path}: importing it raised {type(e).__name__}: {e}") from None
    fn = vars(module).get(name)
    if not callable(fn):
        raise ValueError(f"{what} {path}:{name}: no function {name!r} in {path}")
    return fn


class RewardModelFunction:
    """A reward model in the ``reward_funcs`` list (loaded on its first call, on the rollout's device)."""

    def __init__(self, path: str, batch_size: int = 16):
        self.path, self.batch_size = path, batch_size
        self.model = self.tokenizer = None
        self.__name__ = Path(path.rstrip("/")).name or path

    def score(self, messages: list[list[dict]], texts: list[str], device) -> list[float]:
        from tandem.data import collate
        from tandem.data.encode import prompt_ids, response_ids
        from tandem.models import load_reward_model
        from tandem.models.scoring import sequence_rewards

        if self.model is None:
            self.model, self.tokenizer = load_reward_model(self.path, device=device)
            self.model.eval()
        tok = self.tokenizer
        pad = pad_token_id(tok)
        seqs = [prompt_ids(tok, m) + response_ids(tok, t) for m, t in zip(messages, texts)]
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(seqs), self.batch_size):
                chunk = [{"input_ids": s, "labels": [-100] * len(s)} for s in seqs[i:i + self.batch_size]]
                batch = {k: v.to(device) for k, v in collate(chunk, mode="pad", pad_id=pad).items()}
                out += sequence_rewards(self.model, batch, len(chunk)).float().tolist()
        return out


def resolve_reward(spec, what: str = "reward_funcs", batch_size: int = 16):
    """``(name, function or RewardModelFunction)`` for one entry of ``reward_funcs`` (module docstring)."""
    if callable(spec):
        return (spec.__name__ if isinstance(spec, types.FunctionType) else type(spec).__name__), spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{what}: expected 'module:function', 'file.py:function' or a reward model path, got {spec!r}")
    m = _FILE_SPEC.match(spec)
    if m:
        return m["fn"], _from_file(m["file"], m["fn"], what)
    if _MODULE_SPEC.match(spec):
        return spec.partition(":")[2], resolve_function(spec, what)
    model = RewardModelFunction(spec, batch_size)
    from tandem.models import check_exists

    check_exists(spec, what)
    return model.__name__, model


class RewardFunctions:
    """The ``reward_funcs`` of a run with their ``reward_weights``: call them on a batch of completions."""

    def __init__(self, specs: list, weights: list[float] | None = None, batch_size: int = 16):
        if not specs:
            raise ValueError("reward_funcs: give at least one reward function ('module:function', 'file.py:function' "
                             "or a reward model path)")
        resolved = [resolve_reward(s, batch_size=batch_size) for s in specs]
        names = [n for n, _ in resolved]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        self.funcs = [f for _, f in resolved]
        if weights is None:
            weights = [1.0] * len(self.funcs)
        if len(weights) != len(self.funcs):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(self.funcs)} reward_funcs: give one "
                             "weight per function")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise ValueError(f"reward_weights must be finite numbers, got {weights}")
        self.weights = [float(w) for w in weights]

    def __call__(self, prompts: list[dict], completion_ids: list[list[int]], texts: list[str], device) -> torch.Tensor:
        """``[N, F]`` float32 rewards (NaN where a function returned ``None``) of ``N`` completions; ``prompts[i]``
        is the prompt feature of completion ``i`` (``prompt`` messages, optional ``columns`` and ``conversational``)."""
        N = len(texts)
        conv = [bool(p.get("conversational", True)) for p in prompts]
        p_arg = [p["prompt"] if c else p["prompt"][-1]["content"] for p, c in zip(prompts, conv)]
        c_arg = [[{"role": "assistant", "content": t}] if c else t for t, c in zip(texts, conv)]
        keys: dict[str, None] = {}
        for p in prompts:
            keys.update(dict.fromkeys(k for k in p.get("columns", {}) if k not in ("prompt", "completion", "completion_ids")))
        columns = {k: [p.get("columns", {}).get(k) for p in prompts] for k in keys}
        out = torch.full((N, len(self.funcs)), math.nan, dtype=torch.float32)
        for j, (name, fn) in enumerate(zip(self.names, self.funcs)):
            try:
                if isinstance(fn, RewardModelFunction):
                    got = fn.score([p["prompt"] for p in prompts], texts, device)
                else:
                    got = fn(prompts=p_arg, completions=c_arg, completion_ids=[list(c) for c in completion_ids], **columns)
            except Exception as e:  # noqa: BLE001 - a user's function: one line naming it
                raise RewardFunctionError(f"reward function {name} raised {type(e).__name__}: {e}") from None
            out[:, j] = torch.tensor(_checked(name, got, N), dtype=torch.float32)
        return out.to(device)

    def combine(self, per_func: torch.Tensor) -> torch.Tensor:
        """``[N]``: the weighted sum over the functions that scored each row; NaN for an unscorable row."""
        w = torch.tensor(self.weights, dtype=per_func.dtype, device=per_func.device)
        total = (per_func * w).nansum(1)
        return total.masked_fill(per_func.isnan().all(1), math.nan)

    def sums(self, per_func: torch.Tensor) -> dict[str, float]:
        """Per function: sum, sum of squares and count of the rows it scored (summed over processes, then
        :meth:`stats`)."""
        out = {}
        for j, name in enumerate(self.names):
            x = per_func[:, j]
            x = x[~x.isnan()].double()
            out.update({f"{name}/sum": float(x.sum()), f"{name}/sq": float((x**2).sum()), f"{name}/n": float(len(x))})
        return out

    def stats(self, sums: dict[str, float]) -> dict[str, float]:
        """``rewards/NAME/mean`` and ``rewards/NAME/std`` (population std over the rows the function scored; NaN when
        it scored none) from :meth:`sums`."""
        out = {}
        for name in self.names:
            n = sums[f"{name}/n"]
            mean = sums[f"{name}/sum"] / n if n else math.nan
            var = sums[f"{name}/sq"] / n - mean**2 if n else math.nan
            out[f"rewards/{name}/mean"], out[f"rewards/{name}/std"] = mean, math.sqrt(max(var, 0.0)) if n else math.nan
        return out

    def scores(self, prompts: list[dict], responses: list[list[int]], texts: list[str], device) -> torch.Tensor:
        """``[N]`` combined rewards with unscorable rows at 0: the PPO scorer's signature."""
        return torch.nan_to_num(self.combine(self(prompts, responses, texts, device)), nan=0.0)


def _checked(name: str, got, n: int) -> list[float]:
    """``got`` as ``n`` floats (NaN for ``None``), or a :class:`RewardFunctionError` naming the function."""
    if isinstance(got, torch.Tensor):
        got = got.detach().cpu().flatten().tolist()
    try:
        values = list(got)
    except TypeError:
        raise RewardFunctionError(f"reward function {name} returned {type(got).__name__}, not a list of rewards") from None
    if len(values) != n:
        raise RewardFunctionError(f"reward function {name} returned {len(values)} rewards for {n} completions; return "
                                  "one reward (or None) per completion")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
        elif isinstance(v, numbers.Real) or isinstance(v, torch.Tensor) and v.numel() == 1:
            out.append(float(v))
        else:
            raise RewardFunctionError(f"reward function {name} returned {v!r} for completion {i}; a reward is a number "
                                      "or None")
    return out
