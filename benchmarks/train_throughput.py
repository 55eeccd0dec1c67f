"""Training throughput: segdistill's training loop against a plain PyTorch loop, same model.

The 31M-parameter U-Net (base 64, depth 4) at 256x256, batch 2, fp32 and bf16 autocast. Ours runs
the real pipeline: images decoded from disk, random crops, the default augmentation, BCE+Dice,
gradient clipping, through ``train_one_epoch``. The plain loop trains on tensors already in memory
with plain BCE, i.e. it does strictly less work. Runs alternate (plain, ours, plain, ours, ...) so
machine noise hits both alike; medians of the per-repeat images/s are reported.

    python benchmarks/train_throughput.py [--steps 6] [--repeats 3] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts src/ on the path)
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from segdistill.config import Config
from segdistill.data.dataset import Item, SegDataset
from segdistill.data.discovery import discover
from segdistill.data.preprocess import Preprocess
from segdistill.data.synth import make_synthetic_dataset
from segdistill.engine.train import train_one_epoch
from segdistill.losses import make_task_loss
from segdistill.models import create_model
from segdistill.runtime import cpu_has_native_bf16, resolve_workers, use_channels_last


def plain_loop(model, batches, dtype) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sum(x.shape[0] for x, _ in batches) / (time.perf_counter() - t0)


def ours(model, loader, dtype, channels_last: bool) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = make_task_loss("bce_dice")
    t0 = time.perf_counter()
    train_one_epoch(model, loss_fn, opt, loader, torch.device("cpu"), amp_dtype=dtype, grad_clip=1.0,
                    channels_last=channels_last, desc="ours")
    return len(loader.dataset) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    args = ap.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    data = make_synthetic_dataset(tmp / "d", count=16, size=320, seed=0)
    cfg = Config()
    split = discover(cfg.data.__class__(root=str(data), val_fraction=0))
    pre = Preprocess(mean=[0.45], std=[0.2])
    n = args.steps * args.batch
    ds = SegDataset([Item(p.image, p.mask) for p in split.train], pre, train=True, input_size=args.size,
                    augment=cfg.augment, length=n, seed=0)
    ds.set_epoch(1)
    loader = DataLoader(ds, batch_size=args.batch, num_workers=resolve_workers("auto"), drop_last=True)
    batches = [(torch.randn(args.batch, 1, args.size, args.size), (torch.rand(args.batch, 1, args.size, args.size) > 0.5).float())
               for _ in range(args.steps)]
    model = create_model("unet", base=args.base, depth=4)
    n_params = sum(p.numel() for p in model.parameters())
    cl = use_channels_last("auto", torch.device("cpu"), training=True)
    rows = []
    for prec in args.precisions.split(","):
        dtype = None if prec == "fp32" else torch.bfloat16
        plain_runs, our_runs = [], []
        # one untimed warm-up step each (allocator, oneDNN kernel selection)
        plain_loop(model, batches[:1], dtype)
        for _ in range(args.repeats):
            plain_runs.append(plain_loop(model, batches, dtype))
            ds.set_epoch(len(our_runs) + 2)
            our_runs.append(ours(model, loader, dtype, cl))
            print(f"{prec}: plain {plain_runs[-1]:.3f} img/s, ours {our_runs[-1]:.3f} img/s", flush=True)
        p, o = statistics.median(plain_runs), statistics.median(our_runs)
        rows.append({"precision": prec, "plain img/s": p, "segdistill img/s": o, "ratio ours/plain": o / p,
                     "native bf16": cpu_has_native_bf16(), "repeats": args.repeats, "steps": args.steps})
    common.finish("train_throughput" + (f"_{args.tag}" if args.tag else ""), rows, {"params": n_params, "size": args.size, "batch": args.batch,
                                              "workers": resolve_workers("auto"), "channels_last": cl},
                  title=f"Training throughput, U-Net base {args.base} ({n_params / 1e6:.1f}M params), {args.size}x{args.size}, batch {args.batch}")


if __name__ == "__main__":
    main()
