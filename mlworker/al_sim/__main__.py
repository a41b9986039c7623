"""Label-efficiency simulation of the product's active learning. See mlworker/al_sim.md.

    python -m mlworker.al_sim --base-data ../shared/data/pbc --pool-data ../shared/data/deepapl \\
        --strategies random,least_confidence,margin,entropy,weak_class,kcenter,default \\
        --seed-labels 100 --batch 100 --rounds 15 --repeats 3 --out runs/al_sim
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlworker import active_learning, taxonomy
from mlworker.al_sim.prepare import (
    BaseConfig,
    decode_folder,
    extract_features,
    features_cache_path,
    patient_split,
    train_base_model,
)
from mlworker.al_sim.report import plot_curves, summarise, write_curves, write_json
from mlworker.al_sim.simulate import Head, HeadConfig, PoolState, RoutingRules, SimConfig, run_all
from mlworker.model import load_checkpoint

logger = logging.getLogger("mlworker.al_sim")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mlworker.al_sim",
        description="Simulate labelling rounds and measure how many labels each strategy needs",
    )
    p.add_argument("--base-data", required=True, help="labelled folder the base model trains on")
    p.add_argument("--pool-data", required=True, help="labelled folder used as the unlabelled pool")
    p.add_argument(
        "--strategies",
        default=",".join(active_learning.STRATEGIES),
        help="comma-separated strategies of mlworker.active_learning",
    )
    p.add_argument("--seed-labels", type=int, default=100, help="random labels before round 1")
    p.add_argument("--batch", type=int, default=100, help="labels revealed per round")
    p.add_argument("--rounds", type=int, default=15, help="selection rounds after the seed")
    p.add_argument("--repeats", type=int, default=3, help="repeats (seed sets and random draws)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache", default=None, help="cache folder (default: OUT/cache)")
    p.add_argument("--seed", type=int, default=0, help="seed of seed sets and random draws")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="share of pool cells (whole patients) in the never-queried test split",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the patient split")
    g = p.add_argument_group("base model (trained once, cached)")
    g.add_argument(
        "--checkpoint",
        default=None,
        help="use this classifier checkpoint as the base instead of training one",
    )
    g.add_argument("--arch", default=BaseConfig.arch, help="torchvision ResNet")
    g.add_argument("--image-size", type=int, default=BaseConfig.image_size, help="input pixels")
    g.add_argument(
        "--crop",
        type=float,
        default=BaseConfig.crop,
        help="centre crop (kept share of the shorter side) before resizing, for base and pool",
    )
    g.add_argument("--base-epochs", type=int, default=BaseConfig.epochs, help="epochs, all layers")
    g.add_argument("--base-batch-size", type=int, default=BaseConfig.batch_size, help="mini-batch")
    g.add_argument("--base-lr", type=float, default=BaseConfig.lr, help="AdamW peak learning rate")
    g.add_argument(
        "--base-per-class",
        type=int,
        default=None,
        help="use at most this many base images per class (tests)",
    )
    g.add_argument(
        "--pool-per-class",
        type=int,
        default=None,
        help="use at most this many pool images per class (tests)",
    )
    h = p.add_argument_group("head retraining each round (the product's stage 1)")
    h.add_argument("--head-epochs", type=int, default=HeadConfig.epochs, help="epochs")
    h.add_argument("--head-batch-size", type=int, default=HeadConfig.batch_size, help="mini-batch")
    h.add_argument("--head-lr", type=float, default=HeadConfig.lr, help="SGD learning rate")
    h.add_argument(
        "--head-lr-step",
        type=int,
        default=HeadConfig.lr_step,
        help="divide the learning rate by 10 every this many epochs",
    )
    r = p.add_argument_group("the product's routing (applies to the default strategy)")
    r.add_argument("--confidence-threshold", type=float, default=RoutingRules.confidence_threshold)
    r.add_argument("--weak-class-tpr", type=float, default=RoutingRules.weak_class_tpr)
    r.add_argument("--audit-rate", type=float, default=RoutingRules.audit_rate)
    r.add_argument("--no-routing", action="store_true", help="order every candidate for default")
    p.add_argument("--workers", type=int, default=0, help="decode workers")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the base model (1 is fastest on a shared CPU; 0: torch default)",
    )
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in active_learning.STRATEGIES]
    if unknown:
        raise SystemExit(f"unknown strategies {unknown}; choose from {active_learning.STRATEGIES}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out / "cache"
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        return now

    t = time.perf_counter()
    if args.checkpoint:
        checkpoint = load_checkpoint(args.checkpoint)
        size = int(checkpoint["input_size"])
    else:
        size = args.image_size
        base = decode_folder(
            args.base_data, size, cache, args.base_per_class, args.workers, crop=args.crop
        )
        t = lap("decode_base_s", t)
        config = BaseConfig(
            arch=args.arch,
            image_size=size,
            epochs=args.base_epochs,
            batch_size=args.base_batch_size,
            lr=args.base_lr,
            seed=args.seed,
            crop=args.crop,
        )
        checkpoint = train_base_model(base, config, cache, threads=args.threads or None)
        t = lap("base_model_s", t)
    pool = decode_folder(
        args.pool_data, size, cache, args.pool_per_class, args.workers, crop=args.crop
    )
    t = lap("decode_pool_s", t)
    test = patient_split(pool.labels, pool.patients, args.test_fraction, args.split_seed)
    feats = extract_features(checkpoint, pool.images, features_cache_path(cache, checkpoint, pool))
    t = lap("pool_features_s", t)

    state = PoolState(features=feats.features, labels=pool.labels, test=test)
    base_head = Head(
        weight=checkpoint["model"]["fc.weight"].double().numpy(),
        bias=checkpoint["model"]["fc.bias"].double().numpy(),
    )
    sim = SimConfig(
        seed_labels=args.seed_labels,
        batch=args.batch,
        rounds=args.rounds,
        repeats=args.repeats,
        seed=args.seed,
        head=HeadConfig(
            epochs=args.head_epochs,
            batch_size=args.head_batch_size,
            lr=args.head_lr,
            lr_step=args.head_lr_step,
        ),
        routing=RoutingRules(
            confidence_threshold=args.confidence_threshold,
            weak_class_tpr=args.weak_class_tpr,
            audit_rate=args.audit_rate,
            enabled=not args.no_routing,
        ),
    )
    points = run_all(strategies, state, base_head, sim)
    t = lap("rounds_s", t)

    write_curves(points, out / "curves.csv")
    summary, details = summarise(points, strategies)
    write_json(summary, out / "summary.json")
    title = (
        f"{Path(args.pool_data).name} pool ({int((~test).sum())} queryable, {int(test.sum())} "
        f"test cells), base {checkpoint['arch']} {size} px"
        f"{f' (centre {args.crop:.0%})' if args.crop < 1 else ''} on {Path(args.base_data).name}; "
        f"{args.repeats} repeats, mean ± std"
    )
    plot_curves(points, strategies, out / "learning_curves.png", title)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    details |= {
        "args": vars(args),
        "timings": timings,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "pool": {
            "cells": len(pool.labels),
            "queryable": int((~test).sum()),
            "test": int(test.sum()),
            "test_patients": len({p for p, m in zip(pool.patients, test, strict=True) if m}),
            "test_per_class": dict(
                zip(
                    taxonomy.CODES,
                    np.bincount(pool.labels[test], minlength=len(taxonomy.CODES)).tolist(),
                    strict=True,
                )
            ),
            "unreadable": pool.unreadable,
            "ambiguous_left_out": pool.ambiguous,
            "duplicates_left_out": pool.duplicates,
        },
        "base_model": {"arch": checkpoint["arch"], "input_size": size, **checkpoint["metrics"]},
    }
    write_json(details, out / "details.json")
    logger.info("wrote %s in %.0f s: %s", out, timings["total_s"], summary)
    return {"summary": summary, "details": details, "points": points}


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    main(get_args_parser().parse_args())
