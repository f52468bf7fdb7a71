"""Chat templates: the Jinja template that turns a list of messages into a prompt, as HuggingFace stores it.

A model carries one when its directory (scalegpt checkpoint or HF directory) holds `chat_template.jinja`, or a
`chat_template` string in `tokenizer_config.json`. A base model has none, and the server then refuses
/v1/chat/completions instead of making one up. Templates are rendered in Jinja's immutable sandbox, as transformers
does: a template is data from the model's directory, not code to trust.
"""
from __future__ import annotations

import json
from pathlib import Path

from scalegpt.errors import ScalegptError


class ChatTemplate:
    def __init__(self, source: str, where: str, bos_token: str = "", eos_token: str = ""):
        try:
            from jinja2 import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ScalegptError(f"{where}: the model has a chat template but jinja2 is not installed "
                                "(pip install scalegpt[serve])") from None
        self._error = TemplateError
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            self.template = env.from_string(source)
        except TemplateError as e:
            raise ScalegptError(f"{where}: the chat template does not parse ({e})") from None
        self.where, self.bos_token, self.eos_token = where, bos_token, eos_token

    def render(self, messages: list[dict]) -> str:
        """The prompt for these messages, ending where the assistant's reply begins. ValueError when the template
        rejects them (it may raise_exception, e.g. on roles out of order)."""

        def raise_exception(message):
            raise ValueError(message)

        try:
            return self.template.render(messages=messages, add_generation_prompt=True, bos_token=self.bos_token,
                                        eos_token=self.eos_token, raise_exception=raise_exception)
        except self._error as e:
            raise ValueError(f"the chat template failed on these messages ({e})") from None


def load_chat_template(directory, eos_token: str = "") -> ChatTemplate | None:
    """The chat template a model directory carries, or None (a base model)."""
    d = Path(directory)
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return ChatTemplate(jinja.read_text(encoding="utf-8"), str(jinja), eos_token=eos_token)
    config = d / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ScalegptError(f"{config}: not valid JSON ({e})") from None
    source = data.get("chat_template") if isinstance(data, dict) else None
    if source is None:
        return None
    if not isinstance(source, str):  # a list of named templates is HF's newer form; the default one serves chat
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)} \
            if isinstance(source, list) else {}
        source = named.get("default")
        if not isinstance(source, str):
            raise ScalegptError(f"{config}: 'chat_template' must be a string or a list with a 'default' template")
    bos = data.get("bos_token") if isinstance(data.get("bos_token"), str) else ""
    eos = data.get("eos_token") if isinstance(data.get("eos_token"), str) else eos_token
    return ChatTemplate(source, str(config), bos_token=bos, eos_token=eos)
