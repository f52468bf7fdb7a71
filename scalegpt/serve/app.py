"""The HTTP side of `scalegpt serve`: OpenAI's routes on FastAPI, each request turned into sequences for the Scheduler.

    GET  /                      the playground page (playground.html)
    GET  /health                {"status": "ok", "running": ..., "waiting": ...}
    GET  /v1/models             the one model served
    POST /v1/completions        prompt (string, list of strings, token ids) -> n completions each; stream = SSE
    POST /v1/chat/completions   only when the model carries a chat template (scalegpt.serve.chat); else a 400

Every failure is OpenAI's error body with a 4xx status (a full queue 429, shutting down 503); a stop string ends a
choice where it begins (the text is held back until it is known not to start one, as `scalegpt.generate.stream`), a
client that goes away cancels its sequences, and the end-of-text token always ends a completion (finish_reason
"stop").
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from scalegpt.errors import ScalegptError
from scalegpt.generate import StreamDecoder, _cut, _split_stop, check_sampling_args, encode_prompt
from scalegpt.serve.protocol import APIError, ChatRequest, CompletionRequest, SamplingFields, error_body, \
    validation_message
from scalegpt.serve.scheduler import QueueFull, SamplingParams, Scheduler, Sequence, ShuttingDown

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServedModel:
    name: str
    tokenizer: object
    scheduler: Scheduler
    chat_template: object | None = None  # scalegpt.serve.chat.ChatTemplate
    max_n: int = 16  # sequences one request may ask for (n x prompts)

    @property
    def context(self) -> int:
        return self.scheduler.config.block_size


class Gate:
    """ASGI middleware in front of every route: the API key (when the server has one; the playground page at / is
    open, it asks for the key itself), and a body over max_bytes gets a 413 before it is read into memory."""

    def __init__(self, app, max_bytes: int, api_key: str | None):
        self.app, self.max_bytes, self.api_key = app, max_bytes, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        if self.api_key is not None and scope["path"] != "/":
            given = headers.get(b"authorization", b"")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}".encode()):
                return await _send_error(send, 401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                         "invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _send_error(send, 413, f"the request body is over {self.max_bytes} bytes")
        seen = 0

        async def limited():  # a chunked body has no length to check up front
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise APIError(413, f"the request body is over {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


async def _send_error(send, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(served: ServedModel, api_key: str | None = None, max_body_bytes: int = 1 << 20) -> "Gate":
    """The ASGI app (FastAPI behind the Gate) for uvicorn; its lifespan starts and closes the scheduler."""
    scheduler = served.scheduler

    @asynccontextmanager
    async def lifespan(app):
        if not scheduler.thread.is_alive():
            scheduler.start()
        yield
        scheduler.close()  # after uvicorn has let the open requests finish (or cut them at its graceful timeout)

    app = FastAPI(title="scalegpt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ScalegptError)
    async def user_error(request, e: ScalegptError):  # e.g. a character the tokenizer cannot encode
        return JSONResponse(error_body(str(e)), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        message, param = validation_message(e.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, e: Exception):  # a bug: one line, no traceback to the client
        return JSONResponse(error_body(f"internal error ({type(e).__name__})", "server_error"), status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return resources.files("scalegpt.serve").joinpath("playground.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "shutting_down" if scheduler.closing else "ok", "model": served.name, **scheduler.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "scalegpt",
             "context_length": served.context, "chat": served.chat_template is not None}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompts = _prompt_ids(served, body.prompt)
        return await _serve(served, body, prompts, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if served.chat_template is None:
            raise APIError(400, f"model '{served.name}' has no chat template (it is a base model): use "
                                "/v1/completions, or serve a model whose directory carries chat_template.jinja "
                                "or tokenizer_config.json's chat_template", param="messages", code="no_chat_template")
        try:
            text = served.chat_template.render([m.model_dump(exclude_none=True) for m in body.messages])
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        return await _serve(served, body, [served.tokenizer.encode(text) or [served.tokenizer.eot_id]], request,
                            chat=True)

    return Gate(app, max_body_bytes, api_key)


def _prompt_ids(served: ServedModel, prompt) -> list[list[int]]:
    tok = served.tokenizer
    if isinstance(prompt, str):
        return [encode_prompt(tok, prompt, 1 << 62)[0]]
    if all(isinstance(p, str) for p in prompt):
        return [encode_prompt(tok, p, 1 << 62)[0] for p in prompt]
    rows = [prompt] if all(isinstance(t, int) for t in prompt) else prompt
    vocab = served.scheduler.config.vocab_size
    for row in rows:
        bad = next((t for t in row if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"'prompt': token id {bad} is outside the vocabulary [0, {vocab})", param="prompt")
    return [list(r) for r in rows]


def _sampling(served: ServedModel, body: SamplingFields, prompts: list[list[int]]) -> tuple[SamplingParams, list]:
    if body.model != served.name:
        raise APIError(404, f"the model '{body.model}' does not exist; this server serves '{served.name}'",
                       param="model", code="model_not_found")
    if body.n * len(prompts) > served.max_n:
        raise APIError(400, f"'n' x prompts = {body.n * len(prompts)} sequences; at most {served.max_n} per request",
                       param="n")
    max_tokens = body.max_tokens if body.max_tokens is not None else min(DEFAULT_MAX_TOKENS, served.context - 1)
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > served.context:
        raise APIError(400, f"this model's context is {served.context} tokens; the prompt has {longest} and "
                            f"max_tokens is {max_tokens}: ask for fewer tokens or shorten the prompt",
                       param="max_tokens" if longest < served.context else "prompt", code="context_length_exceeded")
    top_p = body.top_p if body.top_p < 1 else None
    try:
        check_sampling_args(float(body.temperature), body.top_k, top_p, served.scheduler.config.vocab_size)
        stop_ids, stop_texts = _split_stop(served.tokenizer, body.stop)
    except ScalegptError as e:
        raise APIError(400, str(e)) from None
    params = SamplingParams(max_tokens=max_tokens, temperature=float(body.temperature), top_k=body.top_k,
                            top_p=top_p, stop_ids=frozenset(stop_ids) | {served.tokenizer.eot_id})
    return params, stop_texts


class ChoiceText:
    """Token ids of one choice in, text out: UTF-8 split across tokens and a possible stop string are held back."""

    def __init__(self, tokenizer, stop_texts: list[str]):
        self.decoder, self.stop_texts = StreamDecoder(tokenizer), stop_texts
        self.hold = max((len(s) for s in stop_texts), default=1) - 1
        self.pending, self.tokens, self.finish = "", 0, None

    def push(self, token: int) -> str:
        self.tokens += 1
        self.pending, stopped = _cut(self.pending + self.decoder.push(token), self.stop_texts)
        if stopped:
            self.finish = "stop"
            return self.end("stop")
        out = self.pending[: max(0, len(self.pending) - self.hold)]
        self.pending = self.pending[len(out):]
        return out

    def end(self, reason: str) -> str:
        if self.finish is None:
            self.pending = _cut(self.pending + self.decoder.flush(), self.stop_texts)[0]
        self.finish = self.finish or reason
        out, self.pending = self.pending, ""
        return out


async def _serve(served: ServedModel, body: SamplingFields, prompts: list[list[int]], request: Request, chat: bool):
    params, stop_texts = _sampling(served, body, prompts)
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    seqs, choices = [], []
    for p, ids in enumerate(prompts):
        for j in range(body.n):
            index = p * body.n + j

            def emit(token, reason, index=index):
                loop.call_soon_threadsafe(queue.put_nowait, (index, token, reason))

            seed = None if body.seed is None else body.seed + j  # choice j of a seeded request: seed + j
            seqs.append(Sequence(ids, SamplingParams(**{**params.__dict__, "seed": seed}), emit))
            choices.append(ChoiceText(served.tokenizer, stop_texts))
    try:
        served.scheduler.submit(seqs)
    except QueueFull as e:
        raise APIError(429, str(e), kind="rate_limit_error", code="queue_full") from None
    except ShuttingDown as e:
        raise APIError(503, str(e), kind="server_error", code="shutting_down") from None
    usage = lambda: {"prompt_tokens": sum(len(p) for p in prompts),  # noqa: E731
                     "completion_tokens": sum(c.tokens for c in choices),
                     "total_tokens": sum(len(p) for p in prompts) + sum(c.tokens for c in choices)}
    meta = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
            "model": served.name}
    events = _events(served.scheduler, seqs, choices, queue, None if body.stream else request)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        # The background task runs however the response ends, even when the client left before the first chunk.
        return StreamingResponse(_sse(events, meta, chat, len(choices), include_usage, usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(lambda: [served.scheduler.cancel(s) for s in seqs]))
    texts = [""] * len(choices)
    async for index, piece, _ in events:
        texts[index] += piece
    if any(c.finish in ("error", "cancelled") for c in choices):
        failed = next(c.finish for c in choices if c.finish in ("error", "cancelled"))
        raise APIError(503 if failed == "cancelled" else 500, "the server stopped this request"
                       if failed == "cancelled" else "generation failed on the server", kind="server_error")
    if chat:
        out = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": c.finish}
               for i, (t, c) in enumerate(zip(texts, choices))]
    else:
        out = [{"index": i, "text": t, "logprobs": None, "finish_reason": c.finish}
               for i, (t, c) in enumerate(zip(texts, choices))]
    return {**meta, "object": "chat.completion" if chat else "text_completion", "choices": out, "usage": usage()}


async def _events(scheduler: Scheduler, seqs, choices, queue: asyncio.Queue, request: Request | None):
    """(choice index, text piece, finish_reason or None) until every choice has finished. Leaving early (the client
    went away, or the consumer was closed) cancels whatever is still generating."""
    remaining = len(seqs)
    try:
        while remaining:
            try:
                index, token, reason = await asyncio.wait_for(queue.get(), 0.5)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    return
                continue
            choice = choices[index]
            if choice.finish is not None:  # already ended by a stop string
                continue
            piece = choice.push(token) if token is not None else choice.end(reason)
            if choice.finish is not None:
                scheduler.cancel(seqs[index])
                remaining -= 1
            if piece or choice.finish is not None:
                yield index, piece, choice.finish
    finally:
        for seq in seqs:
            scheduler.cancel(seq)


async def _sse(events, meta: dict, chat: bool, n_choices: int, include_usage: bool, usage):
    """OpenAI's server-sent events: one chunk per piece of text, a last chunk per choice with its finish_reason, a
    usage chunk when asked (stream_options.include_usage), then [DONE]."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, **extra):
        return f"data: {json.dumps({**meta, 'object': kind, 'choices': choices, **extra})}\n\n"

    if chat:  # the role comes first, as OpenAI sends it
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                     for i in range(n_choices)])
    async for index, piece, finish in events:
        if chat:
            yield chunk([{"index": index, "delta": {"content": piece} if piece else {}, "finish_reason": finish}])
        else:
            yield chunk([{"index": index, "text": piece, "logprobs": None, "finish_reason": finish}])
    if include_usage:
        yield chunk([], usage=usage())
    yield "data: [DONE]\n\n"
