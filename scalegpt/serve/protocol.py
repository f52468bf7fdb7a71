"""The OpenAI request bodies the server accepts, and its error body.

Request fields are checked strictly (pydantic, `extra="forbid"`, no coercion of "5" to 5): a bad field gets a 400 with
OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` naming the field, never a 500. Limits that depend
on the model (context length, `n`) are checked by the app, which knows them.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

MAX_STOP = 4  # as OpenAI


class APIError(Exception):
    """An error answered as OpenAI's JSON error body with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


Number = Union[StrictInt, StrictFloat]
TokenIds = Annotated[list[StrictInt], Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""
    model_config = ConfigDict(extra="forbid")
    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=1)
    temperature: Number = Field(1.0, ge=0, le=100)
    top_p: Number = Field(1.0, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=1)  # an extension of OpenAI's API: sample among the k most likely
    n: StrictInt = Field(1, ge=1)
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP)] | None = None
    seed: StrictInt | None = Field(None, ge=0, lt=2**63)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None  # accepted and ignored, as OpenAI's clients may send it


class CompletionRequest(SamplingFields):
    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] | TokenIds | \
        Annotated[list[TokenIds], Field(min_length=1)] = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: StrictStr
    name: StrictStr | None = None


class ChatRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(one-line message, param) for pydantic/FastAPI validation errors: the first error, located by field name."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a union reports one error per member: the field name is what the user needs, not the member's type name
    loc = [p for p in loc if not _is_type_tag(p)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})", None
    if first.get("type") == "extra_forbidden":
        return f"unknown field '{param}'", param
    if first.get("type") == "missing":
        return f"missing required field '{param}'", param
    msg = first.get("msg", "invalid value")
    return (f"'{param}': {msg}" if param else msg), param


def _is_type_tag(part: str) -> bool:
    return part.startswith(("list[", "function-")) or part in {"str", "int", "float", "bool", "dict"} or \
        part.startswith(("constrained-", "json-or-python"))
