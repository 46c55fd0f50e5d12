"""`foresight predictor train|eval|predict`. Registration is cheap; each command imports what it needs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foresight.cli import add_group

log = logging.getLogger(__name__)
DEFAULT_DATA = "prompts/alpaca_eval_model_outputs.jsonl.gz"


def default_data() -> str:
    from bench.results import shared_data_dir

    return str(shared_data_dir() / DEFAULT_DATA)


def register(subparsers: argparse._SubParsersAction) -> None:
    group = add_group(subparsers, "predictor", "Output-length predictor: train, evaluate, predict.")

    train = group.add_parser("train", help="train a predictor artifact")
    _data_flags(train)
    train.add_argument("--out", default=None, help="artifact path (default: the package's default artifact)")
    train.set_defaults(func=_guarded(cmd_train))

    ev = group.add_parser("eval", help="grouped cross-validation, baselines, latency, plot")
    _data_flags(ev)
    ev.add_argument("--model", default=None, help="artifact whose configuration is cross-validated and timed "
                                                  "(default: the shipped artifact)")
    ev.add_argument("--json", default="bench/results/predictor_eval.json", help="where to write the report")
    ev.add_argument("--plot", default=None, help="PNG of predicted vs true (default: beside --json)")
    ev.add_argument("--folds", type=int, default=5)
    ev.add_argument("--candidates", default="ridge,bucket,stack", help="heads to compare, comma-separated")
    ev.add_argument("--embeddings", action="store_true",
                    help="also cross-validate with sentence embeddings in the text score and time them "
                         "(needs the 'embeddings' extra)")
    ev.set_defaults(func=_guarded(cmd_eval))

    pr = group.add_parser("predict", help="predict p50/p90 output tokens for JSONL requests")
    pr.add_argument("--model", default=None, help="artifact (default: the shipped artifact)")
    pr.add_argument("--input", required=True, help="JSONL(.gz) rows with messages|prompt|instruction and model")
    pr.add_argument("--output", default="-", help="JSONL out, one {p50, p90} per input row ('-': stdout)")
    pr.set_defaults(func=_guarded(cmd_predict))


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures (missing or mismatched artifact, unreadable data) exit 2 with one line, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from predictor.data import DataError
        from predictor.model import ArtifactError

        try:
            return func(args)
        except (ArtifactError, DataError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help=f"JSONL(.gz) training data (default: shared data {DEFAULT_DATA})")
    p.add_argument("--tokenizer", default="smollm2", help="tokenizer that counts response tokens: a model name, a "
                                                          "model folder, or a tokenizer.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head", default=None, help="final model: ridge, bucket or stack (default: stack)")
    p.add_argument("--limit", type=int, default=None, help="read only the first N rows")


def _prepare(args: argparse.Namespace):  # -> (Prepared, examples, meta)
    from predictor.data import load_examples
    from predictor.train import Prepared, tokenizer_info

    data = args.data or default_data()
    tokenizer, tok_meta = tokenizer_info(args.tokenizer)
    examples = load_examples(data, tokenizer, limit=args.limit)
    log.info("read %d rows from %s", len(examples), data)
    return Prepared.of(examples), examples, {"tokenizer": tok_meta, "data": Path(data).name}


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from predictor.api import DEFAULT_ARTIFACT
    from predictor.train import TrainConfig, fit, steps

    prepared, _, meta = _prepare(args)
    config = TrainConfig(seed=args.seed, **({"head": args.head} if args.head else {}))
    with tqdm(total=steps(config), desc="train", unit="step") as bar:
        model = fit(prepared, config, meta, progress=bar)
    out = model.save(args.out or DEFAULT_ARTIFACT)
    print(f"wrote {out} ({out.stat().st_size} bytes, head={config.head}, rows={len(prepared.log_y)})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bench.results import write_json
    from predictor.api import load_path
    from predictor.evaluate import cross_validate, latency, plot
    from predictor.train import TrainConfig

    artifact = load_path(args.model)
    prepared, examples, meta = _prepare(args)
    saved = artifact.meta.get("config", {})
    head = args.head or saved.get("head", "stack")
    config = TrainConfig(head=head, alpha=saved.get("alpha", TrainConfig.alpha), seed=args.seed,
                         neighbours=saved.get("neighbours", TrainConfig.neighbours))
    heads = list(dict.fromkeys([h.strip() for h in args.candidates.split(",") if h.strip()] + [head]))
    with tqdm(total=args.folds * len(heads), desc="cross-validate", unit="fit") as bar:
        report = cross_validate(prepared, config, heads, folds=args.folds, progress=bar)
    oof = report.pop("_oof")
    report["chosen"] = head
    report["latency"] = latency(artifact, [e.request for e in examples], seed=args.seed)
    report["artifact"] = {"path": str(args.model or "default"), **{k: artifact.meta.get(k) for k in
                                                                  ("tokenizer", "config", "rows", "data")}}
    report["data"] = meta
    if args.embeddings:
        report["embeddings"] = _eval_embeddings(prepared, examples, config, args.folds)
    out = write_json(args.json, report)
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    chosen = report["candidates"][head]
    plot(*oof[head], f"{head}: tau={chosen['kendall_tau']:.3f}, MAE={chosen['mae']:.0f} tokens "
                     f"({args.folds}-fold by prompt)", png)
    base = report["baselines"]["per_model_median"]
    for name, m in report["candidates"].items():
        print(f"{name:8s} tau={m['kendall_tau']:.3f} spearman={m['spearman']:.3f} MAE={m['mae']:.1f} "
              f"({m['mae'] / base['mae']:.2f}x per-model median) p90 calibration={m['p90_calibration']:.3f}")
    for name, m in report["baselines"].items():
        print(f"baseline {name}: tau={m['kendall_tau']:.3f} MAE={m['mae']:.1f}")
    lat = report["latency"]
    print(f"latency: single p50={lat['single_p50_us']:.0f}us p99={lat['single_p99_us']:.0f}us (CPU time p99="
          f"{lat['single_cpu_p99_us']:.0f}us, load {lat['loadavg'][0]:.1f}); batch of "
          f"{lat['batch_size']} p50={lat['batch_p50_us']:.0f}us")
    if args.embeddings:
        e = report["embeddings"]
        print(f"with embeddings: tau={e['metrics']['kendall_tau']:.3f} MAE={e['metrics']['mae']:.1f}; embedding one "
              f"prompt p50={e['latency']['single_p50_us'] / 1e3:.1f}ms p99={e['latency']['single_p99_us'] / 1e3:.1f}ms")
    print(f"wrote {out} and {png}")
    return 0


def _eval_embeddings(prepared: Any, examples: list[Any], config: Any, folds: int) -> dict[str, Any]:
    from dataclasses import replace

    from predictor.embeddings import encode_latency, load_encoder, with_embeddings
    from predictor.evaluate import cross_validate

    encoder = load_encoder()
    texts = [e.request.last_user or e.request.text for e in examples]
    data = with_embeddings(prepared, texts, encoder)
    # Embeddings add 384 inputs to the ridge text score: a stronger penalty keeps it from overfitting them.
    emb_config = replace(config, alpha=100.0)
    report = cross_validate(data, emb_config, [config.head], folds=folds)
    report.pop("_oof")
    return {"head": config.head, "alpha": emb_config.alpha, "metrics": {
        k: v for k, v in report["candidates"][config.head].items() if k != "per_model"},
        "latency": encode_latency(encoder, texts)}


def cmd_predict(args: argparse.Namespace) -> int:
    import orjson

    from predictor.api import load_path
    from predictor.data import DataError, iter_json_rows, request_from_row

    model = load_path(args.model)
    requests = []
    for i, row in enumerate(iter_json_rows(args.input), 1):
        try:
            requests.append(request_from_row(row))
        except DataError as exc:
            raise DataError(f"{args.input}: row {i}: {exc}") from exc
    lines = b"".join(orjson.dumps(p.to_dict()) + b"\n" for p in model.predict_batch(requests))
    if args.output == "-":
        sys.stdout.buffer.write(lines)
    else:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_bytes(lines)
    return 0

