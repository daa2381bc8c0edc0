"""Throughput of urbanrep's open_clip image encoder: images/s from decoded tensors and from JPEG files.

The file route encodes the 24 real tiles of ``<data root>/imagery_samples`` repeated to ``--n``
(through distinct symlinks, so each one is decoded; no feature cache), which covers decoding,
preprocessing, host-to-device copies and the forward pass. The tensor route feeds preprocessed
random tensors (seeded), i.e. the model alone. A decode-only pass separates the two costs.

Examples::

    python experiments/bench_clip.py                         # ViT-B-32, auto device/precision
    python experiments/bench_clip.py --n 64 --batch-size 32 --device cpu --precision fp32
    python experiments/bench_clip.py --device cuda --precision bf16 --n 4096 --batch-size 256 \\
        --num-workers 8 --json runs/bench_clip_h100.json

Weights are random unless ``--checkpoint`` is given; throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from urbanrep.atomic import write_text_atomic
from urbanrep.datasets import resolve_data_root
from urbanrep.images import ImageConfig, ImageEncoder
from urbanrep.images.encoder import _collate, _ImageFiles, _torch_threads


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--checkpoint", default=None, help="local open_clip checkpoint (default: random weights)")
    p.add_argument("--n", type=int, default=64, help="images per measurement (tiles repeated to N)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader decode workers for the file route")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per route (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--tensors-on-device", action="store_true",
                   help="put the tensor-route input on the device first (pure model throughput)")
    p.add_argument("--data-root", default=None, help="data root (default $URBANREP_DATA or ../shared/data)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_rate(fn, n: int, repeats: int, device: torch.device) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    tiles_csv = resolve_data_root(args.data_root) / "imagery_samples" / "tiles.csv"
    if not tiles_csv.is_file():
        print(f"error: {tiles_csv} not found (set --data-root or URBANREP_DATA)", file=sys.stderr)
        return 1
    tiles = [str(tiles_csv.parent / f) for f in pd.read_csv(tiles_csv)["file"]]

    cfg = ImageConfig(model_name=args.model, checkpoint=args.checkpoint, batch_size=args.batch_size,
                      device=args.device, precision=args.precision, num_workers=args.num_workers)
    enc = ImageEncoder(cfg)
    t0 = time.perf_counter()
    enc.model  # noqa: B018 -- build the model outside the timed loops
    load_s = time.perf_counter() - t0
    dev = enc.device
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu")
    print(f"model {args.model} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}), "
          f"built in {load_s:.2f} s; image size {enc.image_size}, embed dim {enc.embed_dim}")
    print(f"device {dev} ({dev_name}), precision {enc.precision}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, N {args.n}, batch {args.batch_size}, workers {args.num_workers}")

    # tensor route: preprocessed input, the model alone
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 3, *enc.image_size, generator=gen)
    if args.tensors_on_device:
        x = x.to(dev)
    enc.encode_tensors(x[: args.batch_size])  # warm-up (kernels, autotuning)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tensor_rate, tensor_times = _median_rate(lambda: enc.encode_tensors(x), args.n, args.repeats, dev)
    peak_mib = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    with tempfile.TemporaryDirectory(prefix="bench_clip_") as tmp:
        links = []
        for k in range(args.n):
            link = Path(tmp) / f"{k:06d}.jpg"
            os.symlink(tiles[k % len(tiles)], link)
            links.append(str(link))

        # decode-only: the DataLoader with the model's preprocessing, no forward pass
        def decode_only() -> None:
            loader = DataLoader(_ImageFiles(links, enc.transform), batch_size=args.batch_size,
                                num_workers=args.num_workers, collate_fn=_collate)
            with _torch_threads(1) if args.num_workers == 0 else contextlib.nullcontext():
                for _ in loader:
                    pass

        decode_rate, decode_times = _median_rate(decode_only, args.n, args.repeats, dev)
        failures: list[int] = []

        def files() -> None:
            res = enc.encode_paths(links)
            failures.append(len(res.failures))

        file_rate, file_times = _median_rate(files, args.n, args.repeats, dev)

    print(f"tensors -> features : {tensor_rate:9.1f} images/s  (runs {', '.join(f'{t:.2f}' for t in tensor_times)} s)")
    print(f"JPEG decode only    : {decode_rate:9.1f} images/s  (runs {', '.join(f'{t:.2f}' for t in decode_times)} s)")
    print(f"JPEG -> features    : {file_rate:9.1f} images/s  (runs {', '.join(f'{t:.2f}' for t in file_times)} s)")
    if peak_mib is not None:
        print(f"peak GPU memory (tensor route): {peak_mib:.0f} MiB")
    if any(failures):
        print(f"warning: {max(failures)} images failed to decode", file=sys.stderr)

    if args.json:
        result = {
            "model": args.model, "checkpoint": args.checkpoint, "device": str(dev), "device_name": dev_name,
            "precision": enc.precision, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "n": args.n, "batch_size": args.batch_size, "num_workers": args.num_workers,
            "tensors_on_device": args.tensors_on_device, "model_build_s": load_s,
            "tensor_images_per_s": tensor_rate, "decode_images_per_s": decode_rate,
            "file_images_per_s": file_rate, "peak_gpu_mib": peak_mib,
            "times_s": {"tensor": tensor_times, "decode": decode_times, "file": file_times},
        }
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
