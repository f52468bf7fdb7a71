"""`scalegpt serve`: an OpenAI-compatible HTTP server with continuous batching, and a playground page.

    scheduler.py   the model's thread: continuous batching of decode steps over one KV cache
    protocol.py    the request bodies (strictly checked) and OpenAI's error body
    app.py         the routes (FastAPI), streaming as server-sent events
    chat.py        chat templates (Jinja, sandboxed) from a model's directory
    playground.html  the page at /: one file, no build step, no network

Needs the `serve` extra (fastapi, uvicorn, jinja2): `pip install scalegpt[serve]`. See docs/serving.md.
"""
