"""`foresight bench adapt`: how fast the online learner makes a served model it never saw accurate.

For each held-out model M (and repeat): split prompts into a test set (1/6) and a stream set; train the *base*
predictor on every other model's rows of the stream prompts, and the *offline* reference on all models' rows of
the stream prompts (M included). Stream M's stream-prompt completions through ``OnlinePredictor(base).observe`` in
random order; after 0, 10, 25, ... completions, measure the MAE on M's test prompts. In the same run, a naive online
baseline predicts the running median of what it has observed for M. Goal: online MAE within 10% of the offline
MAE after 500 completions. Run it under the shared lock:
``flock /tmp/foresight-bench.lock .venv/bin/foresight bench adapt``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
CHECKPOINTS = (0, 10, 25, 50, 100, 200, 300, 400, 500)
# The shortest and the longest talker, and four in between, from four families.
DEFAULT_HELD_OUT = ("text_davinci_003", "Yi-34B-Chat", "claude-2.1", "gpt4", "Mistral-7B-Instruct-v0.2",
                    "vicuna-13b-v1.5")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("adapt", help="online adaptation to a served model never seen in training")
    p.add_argument("--data", default=None, help="JSONL(.gz) data (default: the shared AlpacaEval outputs)")
    p.add_argument("--tokenizer", default="smollm2")
    p.add_argument("--held-out", default=",".join(DEFAULT_HELD_OUT),
                   help="model name(s) to hold out, comma-separated, or 'all' (17 models: ~1 min each on 2 cores)")
    p.add_argument("--repeats", type=int, default=1, help="random splits and stream orders per held-out model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/adapt.json; PNG beside it)")
    p.set_defaults(func=run)


def _mae(predictor: Any, features: list, y: np.ndarray) -> float:
    return float(np.mean(np.abs(np.array([p.p50 for p in predictor.predict_features_batch(features)]) - y)))


def one_run(data: Any, held: str, seed: int) -> dict[str, Any]:
    from predictor.model import Predictor
    from predictor.online import OnlinePredictor
    from predictor.train import TrainConfig, fit, group_folds

    rng = np.random.default_rng(seed)
    _, test_idx = group_folds(data.groups, 6, seed)[0]
    is_test = np.zeros(len(data.log_y), bool)
    is_test[test_idx] = True
    is_held = data.models == held
    config = TrainConfig(seed=seed)
    base = fit(data.subset(np.flatnonzero(~is_test & ~is_held)), config)
    offline = fit(data.subset(np.flatnonzero(~is_test)), config)
    test = data.subset(np.flatnonzero(is_test & is_held))
    test_req = test.features  # extracted once; the benchmark measures learning, not latency
    y_test = np.expm1(test.log_y)
    stream = rng.permutation(np.flatnonzero(~is_test & is_held))
    y_stream = np.expm1(data.log_y[stream]).round().astype(int)
    online = OnlinePredictor(Predictor.from_dict(base.to_dict()))
    curve, naive = [], []
    seen = 0
    try:
        for point in [c for c in CHECKPOINTS if c <= len(stream)] + [len(stream)]:
            for i in range(seen, point):
                online.observe(held, int(y_stream[i]))
            seen = point
            online.flush()
            curve.append({"seen": point, "mae": _mae(online, test_req, y_test)})
            guess = np.median(y_stream[:point]) if point else np.median(np.expm1(base.stats.prior.mean))
            naive.append({"seen": point, "mae": float(np.mean(np.abs(guess - y_test)))})
    finally:
        online.close()
    offline_mae = _mae(offline, test_req, y_test)
    at500 = next((c["mae"] for c in curve if c["seen"] == 500), curve[-1]["mae"])
    return {"held_out": held, "seed": seed, "test_rows": len(y_test), "stream_rows": len(stream),
            "offline_mae": offline_mae, "online": curve, "naive_running_median": naive,
            "online_mae_at_500": at500, "ratio_at_500": at500 / offline_mae}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bench.results import output_path, write_json
    from predictor.cli import _prepare

    args.limit, args.head = None, None
    data, _, meta = _prepare(args)
    known = sorted(set(data.models.tolist()))
    models = known if args.held_out == "all" else [m.strip() for m in args.held_out.split(",") if m.strip()]
    missing = sorted(set(models) - set(known))
    if missing:
        print(f"error: no rows for {missing} in the data; models there: {known}")
        return 2
    runs = [one_run(data, held, args.seed + r) for held in tqdm(models, desc="held-out models")
            for r in range(args.repeats)]
    ratios = np.array([r["ratio_at_500"] for r in runs])
    summary = {"models": len(models), "runs": len(runs), "ratio_at_500_mean": float(ratios.mean()),
               "ratio_at_500_median": float(np.median(ratios)), "ratio_at_500_max": float(ratios.max()),
               "share_within_10pct": float(np.mean(ratios <= 1.10)),
               "mae_no_adaptation_over_offline_mean": float(np.mean([r["online"][0]["mae"] / r["offline_mae"]
                                                                       for r in runs])),
               "naive_median_at_500_over_offline_mean": float(np.mean(
                   [next(c["mae"] for c in r["naive_running_median"] if c["seen"] == r["online"][-2]["seen"])
                    / r["offline_mae"] for r in runs]))}
    out = output_path(args.out, "adapt")
    write_json(out, {"benchmark": "adapt", "checkpoints": CHECKPOINTS, "summary": summary, "runs": runs,
                     "data": meta})
    _plot(runs, out.with_suffix(".png"))
    print(f"online MAE after 500 completions / offline MAE: mean {summary['ratio_at_500_mean']:.3f}, "
          f"max {summary['ratio_at_500_max']:.3f}; within 10%: {summary['share_within_10pct']:.0%} of "
          f"{len(runs)} runs; before adapting: {summary['mae_no_adaptation_over_offline_mean']:.2f}x; "
          f"naive running median: {summary['naive_median_at_500_over_offline_mean']:.2f}x")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def _plot(runs: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        ax.plot([c["seen"] for c in r["online"]], [c["mae"] / r["offline_mae"] for c in r["online"]],
                color="tab:blue", alpha=0.25, lw=1)
    points = sorted({c["seen"] for r in runs for c in r["online"] if c["seen"] in CHECKPOINTS})
    mean = [np.mean([c["mae"] / r["offline_mae"] for r in runs for c in r["online"] if c["seen"] == p])
            for p in points]
    naive = [np.mean([c["mae"] / r["offline_mae"] for r in runs for c in r["naive_running_median"]
                      if c["seen"] == p]) for p in points]
    ax.plot(points, mean, color="tab:blue", lw=2.5, label="online learner (mean over held-out models)")
    ax.plot(points, naive, color="tab:orange", lw=2, ls="--", label="naive running median")
    ax.axhline(1.0, color="k", lw=1, label="offline model trained on that model's data")
    ax.axhline(1.1, color="k", lw=1, ls=":", label="goal: within 10%")
    ax.set_xlabel("completions of the held-out model seen")
    ax.set_ylabel("MAE / offline MAE")
    ax.set_ylim(0.8, max(2.0, max(mean) * 1.05))
    ax.legend()
    ax.set_title("Online adaptation to an unseen served model")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
