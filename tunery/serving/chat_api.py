"""An OpenAI-compatible chat endpoint for a registered conversation model (``tunery serve --openai``).

``POST /v1/chat/completions`` takes the OpenAI request (``messages``, ``tools``, ``max_tokens`` or
``max_completion_tokens``, ``temperature``, ``top_p``, ``stream``, ``stop`` is not supported) and answers
with a ``chat.completion`` (or, with ``stream: true``, server-sent ``chat.completion.chunk`` events and
``data: [DONE]``). The prompt is built exactly as in training (the model's chat template, tools written as
text where the template has none) and tool calls in the answer come back as OpenAI ``tool_calls`` with
``finish_reason: tool_calls``. ``GET /v1/models`` lists the one served model. Bad requests get 400 with an
OpenAI error body; bodies over ``--max-request-bytes`` get 413. Binds 127.0.0.1 unless told otherwise.

Run as ``python -m tunery.serving.chat_api MODEL [--host --port]``; the model is downloaded from MLflow.
"""

# no `from __future__ import annotations` here: FastAPI reads the handlers' annotations (Request) at runtime
import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 4096


class ChatEngine:
    """The exported model, its tokenizer and how to prompt it (from a registered chat model's folder)."""

    def __init__(self, model_dir: str | Path, name: str) -> None:
        from transformers import AutoTokenizer

        from tunery.data.templates import end_of_turn_ids, tool_style
        from tunery.layout import MODEL_META
        from tunery.training.export import load_exported

        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_exported(Path(model_dir), "sft").eval()
        self.style = tool_style(self.tokenizer)
        self.ends = end_of_turn_ids(self.tokenizer)  # generation stops at any of them
        meta = json.loads((Path(model_dir) / MODEL_META).read_text(encoding="utf-8"))
        self.repetition_penalty = float(meta.get("sft", {}).get("repetition_penalty", 1.0))  # as evaluated
        self.lock = threading.Lock()  # one generation at a time: the model is not shared across threads

    def prompt_ids(self, conversation: dict) -> list[int]:
        from tunery.data.templates import prepared

        messages, tools = prepared(self.tokenizer, conversation, self.style)
        ids = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)

    def generate(self, ids: list[int], max_tokens: int, temperature: float, top_p: float, streamer=None):
        """Token ids generated after ``ids`` (greedy unless ``temperature`` > 0)."""
        import torch

        sample = temperature > 0
        with self.lock, torch.no_grad():
            out = self.model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                repetition_penalty=self.repetition_penalty,
                eos_token_id=sorted(self.ends),
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                streamer=streamer,
            )
        return out[0, len(ids) :].tolist()

    def finish_reason(self, new: list[int], max_tokens: int, calls: bool) -> str:
        """OpenAI's finish reason: ``tool_calls``, ``length`` (the budget ran out mid-answer) or ``stop``."""
        if calls:
            return "tool_calls"
        return "length" if len(new) >= max_tokens and not set(new[-1:]) & self.ends else "stop"


class RequestError(ValueError):
    """A request the endpoint refuses (400), with an OpenAI-style message."""


def parse_request(body: dict) -> tuple[dict, int, float, float, bool]:
    """(conversation, max_tokens, temperature, top_p, stream) of a chat completions request body."""
    from tunery.data.conversations import ConversationError, prompt

    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise RequestError("'messages' must be a non-empty list of chat messages")
    try:
        conversation = prompt(body["messages"], body.get("tools") or [])
    except ConversationError as exc:
        raise RequestError(f"messages: {exc}") from None
    max_tokens = next(
        (body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None),
        DEFAULT_MAX_TOKENS,
    )
    if (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise RequestError(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}")
    temperature = body["temperature"] if body.get("temperature") is not None else 0
    top_p = body["top_p"] if body.get("top_p") is not None else 1
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (temperature, top_p)):
        raise RequestError("temperature and top_p must be numbers")
    if not 0 <= temperature <= 2 or not 0 < top_p <= 1:
        raise RequestError("temperature must be in [0, 2] and top_p in (0, 1]")
    if body.get("n", 1) != 1:
        raise RequestError("only n=1 is supported")
    if body.get("stop"):
        raise RequestError("'stop' sequences are not supported: the model ends its turn by itself")
    return conversation, max_tokens, float(temperature), float(top_p), bool(body.get("stream", False))


def _message(text: str) -> dict:
    """The assistant message of a generated text (its tool calls as OpenAI ``tool_calls``)."""
    from tunery.data.templates import parse_tool_calls

    content, calls = parse_tool_calls(text)
    if calls:
        return {"role": "assistant", "content": content or None, "tool_calls": calls}
    return {"role": "assistant", "content": content}


def create_app(engine: ChatEngine, max_request_bytes: int = MAX_REQUEST_BYTES):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="tunery chat", docs_url=None, redoc_url=None)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": None}}, status_code=status)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "owned_by": "tunery"}]}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        raw = await request.body()
        if len(raw) > max_request_bytes:
            return error(413, f"request body over {max_request_bytes} bytes (--max-request-bytes)")
        try:
            body = json.loads(raw)
            conversation, max_tokens, temperature, top_p, stream = parse_request(body)
        except json.JSONDecodeError as exc:
            return error(400, f"the body is not JSON: {exc.msg}")
        except RequestError as exc:
            return error(400, str(exc))
        ids = engine.prompt_ids(conversation)
        created, completion_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": completion_id, "created": created, "model": engine.name}
        if stream:
            return StreamingResponse(
                _stream(engine, ids, max_tokens, temperature, top_p, head), media_type="text/event-stream"
            )
        import anyio

        new = await anyio.to_thread.run_sync(engine.generate, ids, max_tokens, temperature, top_p)
        text = engine.tokenizer.decode(new, skip_special_tokens=True).strip()
        message = _message(text)
        finish = engine.finish_reason(new, max_tokens, "tool_calls" in message)
        return {
            **head,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(new),
                "total_tokens": len(ids) + len(new),
            },
        }

    return app


def _stream(
    engine: ChatEngine, ids: list[int], max_tokens: int, temperature: float, top_p: float, head: dict
):
    """Server-sent chunks: the role, the text as it is generated (tool calls once the answer is complete:
    a call is only known when its block closes), the finish reason, ``[DONE]``."""
    from transformers import TextIteratorStreamer

    from tunery.data.templates import parse_tool_calls

    def chunk(delta: dict, finish: str | None = None) -> str:
        payload = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    result: dict = {}

    def run() -> None:
        try:
            result["new"] = engine.generate(ids, max_tokens, temperature, top_p, streamer)
        except Exception as exc:  # noqa: BLE001 - reported in the stream, the server goes on
            result["error"] = exc
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    yield chunk({"role": "assistant", "content": ""})
    text, sent = "", 0
    for piece in streamer:
        text += piece
        visible = text.lstrip()
        if "<tool_call>" in visible:  # held back: sent as tool_calls at the end
            continue
        if len(visible) > sent:
            yield chunk({"content": visible[sent:]})
            sent = len(visible)
    worker.join()
    if "error" in result:
        yield f"data: {json.dumps({'error': {'message': str(result['error']), 'type': 'server_error'}})}\n\n"
        yield "data: [DONE]\n\n"
        return
    content, calls = parse_tool_calls(text.strip())
    if calls:
        if len(content) > sent:
            yield chunk({"content": content[sent:]})
        yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
    yield chunk({}, engine.finish_reason(result.get("new", []), max_tokens, bool(calls)))
    yield "data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tunery.serving.chat_api", description="tunery serve --openai"
    )
    parser.add_argument("model", help="NAME@alias, NAME/version or an MLflow model URI")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES)
    args = parser.parse_args(argv)

    import shutil
    import signal
    import sys

    import mlflow
    import uvicorn

    from tunery.layout import MODEL_META
    from tunery.serving.scoring import default_tracking_uri, model_uri
    from tunery.tracking import use_tracking_uri

    use_tracking_uri(default_tracking_uri())
    root = tempfile.mkdtemp(prefix="tunery-chat-")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri(args.model), dst_path=root))
        found = sorted(p.parent for p in (local / "artifacts").rglob(MODEL_META))  # the pyfunc's model_dir
        if not found:
            raise SystemExit(f"error: {args.model} has no exported tunery model folder")
        meta = json.loads((found[0] / MODEL_META).read_text(encoding="utf-8"))
        if meta.get("task") != "sft":
            raise SystemExit(f"error: {args.model} is a {meta.get('task')} model; --openai serves sft models")
        model_dir = found[0]
        engine = ChatEngine(model_dir, args.model)
        print(
            f"serving {args.model} on http://{args.host}:{args.port}/v1 (OpenAI chat completions)", flush=True
        )
        # uvicorn re-raises a SIGTERM after its graceful shutdown with the handler it found: the default one
        # would end the process before `finally` removes the model copy (hundreds of MB per start)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        uvicorn.run(
            create_app(engine, args.max_request_bytes), host=args.host, port=args.port, log_level="warning"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
