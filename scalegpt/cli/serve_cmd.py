"""scalegpt serve (--checkpoint RUN | --hf DIR) [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch 16]
[--max-queue 64] [--max-n N] [--device cpu]: an OpenAI-compatible server (docs/serving.md)."""
from __future__ import annotations

import ipaddress
import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a playground page")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory, or a run directory (its latest)")
    src.add_argument("--hf", metavar="DIR", help="a HuggingFace GPT-2, Llama or Qwen3 directory, or a GPT-2 hub name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; the line printed names it)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every API request")
    p.add_argument("--model-name", default=None, help="the model's id in the API (default: the directory's name)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (KV cache rows)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences waiting beyond that; more get a 429")
    p.add_argument("--max-n", type=int, default=None, help="sequences one request may ask for, n x prompts "
                   "(default: --max-batch)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 beyond)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0,
                   help="on SIGTERM/Ctrl-C, seconds to let requests in flight finish before cancelling them")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    import socket
    from pathlib import Path

    from scalegpt.cli.eval_cmd import load_model, pick_device
    from scalegpt.errors import ScalegptError

    args.max_n = args.max_batch if args.max_n is None else args.max_n
    for name, low in (("port", 0), ("max_batch", 1), ("max_queue", 1), ("max_n", 1), ("max_body", 1024)):
        value = getattr(args, name)
        if value < low or (name == "port" and value > 65535):
            raise ScalegptError(f"--{name.replace('_', '-')} must be >= {low}" + (" and <= 65535" if name == "port"
                                                                                  else "") + f", got {value}")
    if args.shutdown_timeout < 0:
        raise ScalegptError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    try:
        import uvicorn

        from scalegpt.serve.app import ServedModel, create_app
        from scalegpt.serve.chat import load_chat_template
        from scalegpt.serve.scheduler import Scheduler
    except ImportError as e:
        raise ScalegptError(f"scalegpt serve needs the serve extra ({e.name} is missing): "
                            "pip install 'scalegpt[serve]'") from None
    if args.api_key is not None and not args.api_key.strip():
        raise ScalegptError("--api-key is empty")
    if not _is_loopback(args.host) and args.api_key is None:
        print(f"scalegpt: warning: --host {args.host} accepts connections from other machines, with no --api-key",
              file=sys.stderr)
    from scalegpt.generate import for_cpu_decoding

    device = pick_device(args.device)
    model, tokenizer, _, where = load_model(args.checkpoint, args.hf, device)
    model = for_cpu_decoding(model)  # batched decoding's few-row matmuls: oneDNN, not MKL (scalegpt.generate)
    where = Path(where)
    chat = load_chat_template(where, eos_token="<|endoftext|>")
    served = ServedModel(name=args.model_name or _model_name(where), tokenizer=tokenizer,
                         scheduler=Scheduler(model, max_batch=args.max_batch, max_queue=args.max_queue),
                         chat_template=chat, max_n=args.max_n)
    app = create_app(served, api_key=args.api_key, max_body_bytes=args.max_body)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # from now on connections wait in the backlog until uvicorn accepts them
    except OSError as e:
        sock.close()
        raise ScalegptError(f"cannot listen on {args.host}:{args.port} ({e.strerror})") from None
    host, port = sock.getsockname()[:2]
    print(f"scalegpt: serving '{served.name}' on http://{host}:{port} (playground at /, API at /v1; "
          f"batch {args.max_batch}, chat {'on' if chat else 'off: no chat template'})", flush=True)
    _Server = _server_class()
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=args.shutdown_timeout,
                            lifespan="on")
    _Server(config).run(sockets=[sock])  # SIGTERM/SIGINT: stop accepting, finish or cancel, exit
    print("scalegpt: server stopped", file=sys.stderr)
    return 0


def _server_class():
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises a SIGTERM once its graceful shutdown is done (the process then dies by the signal);
        for `scalegpt serve` SIGTERM is the normal way to stop, so the command returns and exits 0."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list) and sig == signal.SIGTERM:
                captured.remove(sig)

    return Server


def _model_name(where) -> str:
    """A run's checkpoint (RUN/checkpoints/step_N) is named after the run; any other directory after itself."""
    return where.parent.parent.name if where.name.startswith("step_") and where.parent.name == "checkpoints" \
        else where.name


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
