"""FSDP2 on CPU: 1 process (unsharded) vs 2 processes (``tandem.distributed.shard_model``, gloo), with the modified
EWC on and off. Time per optimizer step and peak memory per process.

Each configuration runs under its own ``torchrun`` (so every number is that run's own): a random Llama (shape
``small``: hidden 512, 8 layers, vocab 16384, untied, fp32, AdamW), an IFA stage of SFT steps (not timed), the
regularizer's stage end, then the measured HPA stage of SFT steps in which the EWC penalty is active. The global
batch is the same for 1 and 2 processes (``--rows`` sequences of ``--length`` tokens per step, split between the
processes), 1 thread per process. Reported per process: mean step time (the first measured step is a warm-up),
peak RSS (``ru_maxrss``) and the regularizer's state (its snapshots and anchors: this process's slices).

    python benchmarks/fsdp_cpu.py                    # prints a markdown table
    python benchmarks/fsdp_cpu.py --shape tiny --steps 4
    python benchmarks/fsdp_cpu.py --device cuda --procs 1 --shard-one --shape smollm2   # FSDP2 on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {"tiny": (256, 4, 4, 2, 768, 8192), "small": (512, 8, 8, 4, 1536, 16384),
          "smollm2": (576, 30, 9, 3, 1536, 49152)}  # smollm2: the SmolLM2-135M shape, untied (for a GPU)


def state_bytes(x) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(state_bytes(v) for v in x.values())
    return sum(state_bytes(v) for v in x) if isinstance(x, (list, tuple)) else 0


def worker(args) -> None:
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from tandem.data import collate
    from tandem.distributed import FSDPSettings, shard_model
    from tandem.objectives import build as build_objective
    from tandem.regularizers import build
    from tandem.regularizers.base import StageData, StageInfo

    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    h, n, heads, kv, inter, vocab = SHAPES[args.shape]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                                         max_position_embeddings=1024, tie_word_embeddings=False)).to(device)
    if world > 1 or args.shard_one:
        shard_model(model, FSDPSettings(), device.type)
    sft = build_objective("sft")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    reg = build("ewc", lam=1.0, f_max=50.0) if args.reg == "ewc" else None
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, vocab, (args.length,), generator=g).tolist() for _ in range(args.rows * (args.steps + 2))]
    feats = [{"input_ids": r, "labels": r} for r in rows]

    def step(i: int) -> None:
        mine = feats[i * args.rows : (i + 1) * args.rows][rank::world]
        batch = collate(mine, mode="pack", pad_id=0, max_tokens_per_row=4096)
        loss, _ = sft(model, {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        loss.backward()
        if reg is not None:
            reg.grad_term(model)
        opt.step()
        opt.zero_grad(set_to_none=True)

    ifa, hpa = StageInfo(0, "01-sft", "ifa"), StageInfo(1, "02-sft", "hpa")
    if reg is not None:
        reg.before_stage(model, ifa)
    for i in range(2):
        step(i)
    if reg is not None:
        reg.after_stage(model, ifa, StageData(lambda k: []))
        reg.before_stage(model, hpa)
    times = []
    for i in range(args.steps):
        dist.barrier()
        t0 = time.perf_counter()
        step(2 + i)
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        if i > 0:
            times.append(time.perf_counter() - t0)
    out = {"procs": world, "rank": rank, "reg": args.reg, "step_s": sum(times) / len(times),
           "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "sharded": world > 1 or args.shard_one,
           "reg_mib": state_bytes(reg.state_dict()) / 2**20 if reg is not None else 0.0,
           "penalty": reg.last_penalty if reg is not None else 0.0,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def launch(procs: int, reg: str, args) -> list[dict]:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--nproc_per_node", str(procs), "--master_port", str(29600 + procs * 10 + (reg == "ewc")),
           __file__, "--worker", "--reg", reg, "--shape", args.shape, "--steps", str(args.steps),
           "--rows", str(args.rows), "--length", str(args.length), "--device", args.device] + \
        (["--shard-one"] if args.shard_one else [])
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1800)
    if p.returncode:
        sys.exit(p.stderr[-4000:])
    return [json.loads(l[len("RESULT "):]) for l in p.stdout.splitlines() if l.startswith("RESULT ")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES))
    ap.add_argument("--steps", type=int, default=5, help="measured steps (the first is a warm-up)")
    ap.add_argument("--rows", type=int, default=8, help="sequences per optimizer step (all processes together)")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reg", default="none", choices=["none", "ewc"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: nccl, one GPU per process")
    ap.add_argument("--procs", default="1,2", help="process counts to compare")
    ap.add_argument("--shard-one", action="store_true", help="apply fully_shard with one process too (FSDP2 on 1 GPU)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"shape {args.shape}, {args.rows} x {args.length} tokens per step, fp32, 1 thread per process")
    print("| processes | regularizer | time per step | peak RSS per process | regularizer state per process |")
    print("|---:|---|---:|---:|---:|")
    rows = []
    for procs in [int(p) for p in args.procs.split(",")]:
        for reg in ("none", "ewc"):
            res = launch(procs, reg, args)
            step = max(r["step_s"] for r in res)
            peak = max(r["peak_mib"] for r in res)
            state = max(r["reg_mib"] for r in res)
            rows.append({"procs": procs, "reg": reg, "step_ms": round(step * 1000, 1), "peak_rss_mib": round(peak),
                         "gpu_peak_mib": res[0]["gpu_peak_mib"], "reg_state_mib": round(state, 1),
                         "sharded": res[0]["sharded"]})
            print(f"| {procs} | {'modified EWC' if reg == 'ewc' else 'none'} | {step * 1000:.0f} ms | {peak:.0f} MiB "
                  f"| {state:.1f} MiB |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": args.shape, "device": args.device, "rows": rows}, indent=2))
    print(f"({res[0]['params_m']:.1f}M parameters)")


if __name__ == "__main__":
    main()
