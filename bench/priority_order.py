"""Time the priority order (exponential keys) for N samples in the original's five-source mix.

Usage: python bench/priority_order.py [--samples 10000000]
"""
from __future__ import annotations

import argparse
import resource
import time

from megatron_huatuo.data.priority import DEFAULT_EPOCHS, DEFAULT_PRIORITIES, priority_order


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reference", action="store_true",
                    help="also time torch.multinomial(weights, N, replacement=False) (the issue's reference; N <= 2**24)")
    args = ap.parse_args()
    kinds = ["web", "literature", "encyclopedia", "books", "sft"]
    per = args.samples // 7  # sft counts 3x (3 epochs): 4 + 3 = 7 shares
    sizes = [per] * 5
    t0 = time.perf_counter()
    order = priority_order(sizes, [DEFAULT_PRIORITIES[k] for k in kinds], [DEFAULT_EPOCHS[k] for k in kinds], args.seed)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"{len(order)} samples ordered in {dt:.2f} s, peak RSS {peak:.2f} GiB")
    if args.reference:
        import torch

        weights = torch.cat([torch.full((sizes[i] * DEFAULT_EPOCHS[k],), float(DEFAULT_PRIORITIES[k]))
                             for i, k in enumerate(kinds)])
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        torch.multinomial(weights, len(weights), replacement=False)
        ref = time.perf_counter() - t0
        print(f"torch.multinomial reference: {ref:.2f} s; ratio reference/ours = {ref / dt:.2f}")


if __name__ == "__main__":
    main()
