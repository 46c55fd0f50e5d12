"""`foresight replica`: one replica process (one GPU, or a simulated one) serving the OpenAI API.

Example: ``foresight replica --runner sim --model tiny --sim-profile h100-llama8b --port 8100 --replica-id r0``.
Registration is cheap; the runner (and torch, for ``--runner torch``) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from foresight.gc_tuning import freeze_startup_objects
from foresight.hashing import DEFAULT_BLOCK_SIZE, DEFAULT_HASH_SEED
from foresight.units import byte_size

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("replica", help="Serve one model replica (OpenAI API) over the batching engine.",
                              description=__doc__)
    p.add_argument("--runner", default="sim", choices=["sim", "torch"], help="model runner")
    p.add_argument("--model", default="tiny", help="model name (tiny, smollm2) or folder")
    p.add_argument("--served-model-name", default=None, help="model id in /v1/models (default: from --model)")
    p.add_argument("--sim-profile", default="h100-llama8b",
                   help="sim runner: GPU-model cost profile (h100|h200)-(llama8b|qwen32b)")
    p.add_argument("--sim-output-mean", type=float, default=256.0, help="sim runner: mean output length")
    p.add_argument("--sim-seed", type=int, default=0, help="sim runner: base seed")
    p.add_argument("--host", default="127.0.0.1", help="listen address")
    p.add_argument("--port", type=int, default=8100, help="listen port")
    p.add_argument("--url", default=None, help="address others reach this replica at (default http://host:port)")
    p.add_argument("--redis", default=None, help="Redis URL: publish KV events and load reports there")
    p.add_argument("--key-prefix", default="foresight:", help="prefix of every Redis key")
    p.add_argument("--replica-id", default="r0", help="this replica's id")
    p.add_argument("--device", default="cpu", help="torch runner: cpu or cuda:N")
    p.add_argument("--dtype", default="auto", help="torch runner: auto, float32, bfloat16, float16")
    p.add_argument("--attention-kernel", default="auto", help="torch runner: auto, sdpa, flex, flash_attn")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.9,
                   help="torch runner: share of the free GPU memory (after a warm-up forward) for activations + KV")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE, help="tokens per KV block")
    p.add_argument("--max-num-seqs", type=int, default=256, help="running requests at most")
    p.add_argument("--max-batched-tokens", type=int, default=8192, help="tokens per step at most")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: model's)")
    p.add_argument("--max-waiting", type=int, default=1024, help="queued requests at most (then 503)")
    p.add_argument("--priority-max-wait", type=float, default=30.0,
                   help="seconds after which a queued request goes before any with a lower priority (no starvation)")
    p.add_argument("--prefill-reserve", type=int, default=None,
                   help="tokens of each step's budget that a running prefill leaves to waiting requests, so a long "
                        "prompt does not block short ones (default: a quarter of --max-batched-tokens; 0: none)")
    p.add_argument("--decode-step-tokens", type=int, default=None,
                   help="tokens per step at most while requests are decoding: smaller prefill chunks keep the time "
                        "between output tokens short (default: a quarter of --max-batched-tokens; set it equal to "
                        "--max-batched-tokens for no cap)")
    p.add_argument("--kv-blocks", type=int, default=None, help="KV pool size in blocks (default: from memory)")
    p.add_argument("--kv-cache-memory", type=byte_size, default=None, help="KV memory in bytes (e.g. 4G)")
    p.add_argument("--decode-context-memory", type=byte_size, default=None,
                   help="torch runner: bytes of decode K/V kept gathered across steady decode steps (default 64 MiB "
                        "on a CPU, 0 on a GPU)")
    p.add_argument("--host-kv-memory", type=byte_size, default=0,
                   help="host RAM for a second KV tier that keeps prefixes evicted from the device (e.g. 200G; "
                        "default 0: none)")
    p.add_argument("--hash-seed", default=DEFAULT_HASH_SEED, help="block hash root seed (same as the gateway)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):  # -> ReplicaConfig
    from replicas.config import ReplicaConfig

    return ReplicaConfig(
        model=args.model, served_model_name=args.served_model_name, runner=args.runner, device=args.device,
        dtype=args.dtype, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
        max_batched_tokens=args.max_batched_tokens, max_model_len=args.max_model_len, max_waiting=args.max_waiting,
        priority_max_wait_s=args.priority_max_wait, prefill_reserve=args.prefill_reserve,
        decode_step_tokens=args.decode_step_tokens,
        kv_blocks=args.kv_blocks, kv_cache_memory=args.kv_cache_memory, host_kv_memory=args.host_kv_memory,
        sim_profile=args.sim_profile,
        sim_output_mean=args.sim_output_mean, sim_seed=args.sim_seed, hash_seed=args.hash_seed,
        replica_id=args.replica_id, host=args.host, port=args.port, url=args.url, redis_url=args.redis,
        key_prefix=args.key_prefix,
        extra={"attention_kernel": args.attention_kernel, "gpu_memory_fraction": args.gpu_memory_fraction,
               "decode_context_memory": args.decode_context_memory},
    )


async def serve(cfg, ready: asyncio.Event | None = None) -> None:  # cfg: ReplicaConfig
    """Build runner, engine and server, and serve until SIGINT/SIGTERM."""
    from aiohttp import web

    from replicas.engine.engine import Engine
    from replicas.engine.kv_events import KVEventPublisher
    from replicas.engine.tokenizer import load_tokenizer
    from replicas.load_report import LoadPublisher
    from replicas.models import resolve_model
    from replicas.runners.registry import create_runner
    from replicas.server import ReplicaServer

    cfg.validate()
    runner = create_runner(cfg)
    tokenizer = getattr(runner, "tokenizer", None)
    if not hasattr(tokenizer, "render_chat"):
        tokenizer = load_tokenizer(resolve_model(cfg.model))
    publisher = KVEventPublisher(cfg.replica_id, cfg.redis_url, cfg.key_prefix)
    engine = Engine(cfg, runner, tokenizer, publisher=publisher)
    loads = None
    if cfg.redis_url:
        loads = LoadPublisher(cfg.redis_url, cfg.key_prefix, cfg.replica_id, cfg.public_url, [cfg.model_name],
                              engine.load_report, cfg.load_interval_s, cfg.load_ttl_s)
    server = ReplicaServer(engine, tokenizer, loads)
    app_runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, cfg.host, cfg.port, backlog=1024)
    await site.start()
    log.info("replica %s serving %s (%s runner, %d KV blocks of %d tokens) on %s", cfg.replica_id, cfg.model_name,
             runner.name, engine.pool.num_blocks, cfg.block_size, cfg.public_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    freeze_startup_objects()  # the model, tokenizer and torch: never garbage, never worth a full GC pass
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await app_runner.cleanup()


def run(args: argparse.Namespace) -> int:
    import uvloop

    cfg = config_from_args(args)
    try:
        cfg.validate()
    except ValueError as exc:
        raise SystemExit(f"foresight replica: {exc}") from None
    uvloop.run(serve(cfg))
    return 0
