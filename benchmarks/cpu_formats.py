"""Which precision and memory format to use on this CPU: the evidence for runtime.py's defaults.

Times a training step (batch 4, 256x256) and an inference pass (batch 1, 512x512) of a U-Net in
fp32 / bf16 autocast, NCHW / channels_last, alternating the variants so noise hits all alike.

    python benchmarks/cpu_formats.py [--base 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import common
import torch
from torch.nn import functional as F

from segdistill.models import create_model
from segdistill.runtime import cpu_has_native_bf16


def step_time(model, x, y, opt, train: bool, dtype) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = model(x)
    if train:
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-bf16", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for mode, (b, s) in (("train", (4, 256)), ("inference", (1, 512))):
        variants = [(p, f) for p in (["fp32"] if args.skip_bf16 else ["fp32", "bf16"]) for f in ("nchw", "channels_last")]
        models = {}
        for p, f in variants:
            m = create_model("unet", base=args.base).train(mode == "train")
            if f == "channels_last":
                m = m.to(memory_format=torch.channels_last)
            models[(p, f)] = (m, torch.optim.AdamW(m.parameters(), 1e-4))
        x = torch.randn(b, 1, s, s)
        y = (torch.rand(b, 1, s, s) > 0.5).float()
        times: dict = {v: [] for v in variants}
        for r in range(args.repeats + 1):  # first round is warm-up
            for p, f in variants:
                m, opt = models[(p, f)]
                xx = x.contiguous(memory_format=torch.channels_last) if f == "channels_last" else x
                with torch.set_grad_enabled(mode == "train"):
                    t = step_time(m, xx, y, opt, mode == "train", torch.bfloat16 if p == "bf16" else None)
                if r:
                    times[(p, f)].append(t)
                print(f"{mode} {p} {f}: {t:.2f}s{'' if r else ' (warm-up)'}", flush=True)
        base_t = statistics.median(times[("fp32", "nchw")])
        for p, f in variants:
            med = statistics.median(times[(p, f)])
            rows.append({"mode": mode, "batch x size": f"{b} x {s}", "precision": p, "format": f,
                         "median s": med, "images/s": b / med, "speed vs fp32 nchw": base_t / med})
    common.finish("cpu_formats", rows, {"base": args.base, "native_bf16": cpu_has_native_bf16()},
                  title=f"U-Net base {args.base} on this CPU (native bf16: {cpu_has_native_bf16()})")


if __name__ == "__main__":
    main()
