"""The official `openai` Python client against deepseekd's /v1 API.

Usage: openai_client.py SOCKET EXPECTED_JSON

SOCKET is the daemon's Unix socket, serving fixtures/llm/tiny-r1 under the
model id `tiny-r1`; EXPECTED_JSON is fixtures/llm/tiny-r1/expected.json, the
model's exact greedy outputs. Each check prints one line when it passes; the
first mismatch prints what differed and exits non-zero.

Run by tests/tests/openai_client.rs with the Python of .venv (`make test`
installs openai==3.51.0 there; it talks HTTP through httpx2, not httpx).
"""

import json
import sys

import openai

from client_checks import MODEL, CheckFailed, check, client as connect, equal, passed, run


def extra(model, name):
    """A field the openai types do not declare (pydantic keeps it as an extra)."""
    value = getattr(model, name, None)
    if value is None and model.model_extra:
        value = model.model_extra.get(name)
    return value


def prompt(expected, name):
    for p in expected["prompts"]:
        if p["name"] == name:
            return p
    raise CheckFailed(f"{name} is not in expected.json")


def check_usage(usage, prompt_tokens, completion_tokens, what):
    check(usage is not None, f"{what}: usage is missing")
    equal(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
        (prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
        f"{what}: usage (prompt, completion, total)",
    )


def main(socket, expected_path):
    with open(expected_path, encoding="utf-8") as f:
        expected = json.load(f)
    client = connect(socket)

    # models.list
    ids = [m.id for m in client.models.list()]
    check(MODEL in ids, f"models.list() lacks {MODEL!r}", ids, [MODEL])
    passed(f"models.list() has {MODEL}: {ids}")

    chat = prompt(expected, "chat_single_turn")
    greedy = chat["greedy"]
    text = greedy["text"]
    prompt_tokens = len(chat["prompt_ids"])
    max_tokens = greedy["max_new_tokens"]
    messages = chat["messages"]

    # Chat, not streamed, greedy.
    response = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens
    )
    equal(response.model, MODEL, "chat: model")
    equal(len(response.choices), 1, "chat: number of choices")
    choice = response.choices[0]
    equal(extra(choice.message, "reasoning_content"), text, "chat: message.reasoning_content")
    equal(choice.message.content, None, "chat: message.content")
    equal(choice.message.role, "assistant", "chat: message.role")
    equal(choice.finish_reason, greedy["finish_reason"], "chat: finish_reason")
    check_usage(response.usage, prompt_tokens, len(greedy["ids"]), "chat")
    passed(
        f"chat (temperature 0): reasoning_content is the greedy text, content None, "
        f"finish_reason {choice.finish_reason}, usage {response.usage.prompt_tokens}/"
        f"{response.usage.completion_tokens}/{response.usage.total_tokens}"
    )

    # The same, streamed, with the usage chunk.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    check(len(chunks) >= 2, "chat stream: fewer than two chunks", len(chunks))
    reasoning = []
    content = []
    finish_reasons = []
    for chunk in chunks:
        equal(chunk.object, "chat.completion.chunk", "chat stream: chunk object")
        for c in chunk.choices:
            piece = extra(c.delta, "reasoning_content")
            if piece is not None:
                reasoning.append(piece)
            if c.delta.content is not None:
                content.append(c.delta.content)
            if c.finish_reason is not None:
                finish_reasons.append(c.finish_reason)
    equal("".join(reasoning), text, "chat stream: joined delta.reasoning_content")
    equal("".join(content), "", "chat stream: joined delta.content")
    equal(finish_reasons, [greedy["finish_reason"]], "chat stream: finish_reason(s)")
    last = chunks[-1]
    equal(last.choices, [], "chat stream: the last chunk's choices")
    check_usage(last.usage, prompt_tokens, len(greedy["ids"]), "chat stream: last chunk")
    for chunk in chunks[:-1]:
        equal(chunk.usage, None, "chat stream: usage before the last chunk")
    passed(
        f"chat streamed with include_usage: {len(chunks)} chunks, joined reasoning_content "
        f"is the greedy text, last chunk has choices [] and usage"
    )

    # top_k = 1 through extra_body is greedy whatever the temperature.
    response = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=1.0,
        max_tokens=max_tokens,
        extra_body={"top_k": 1},
    )
    equal(
        extra(response.choices[0].message, "reasoning_content"),
        text,
        "chat with extra_body top_k 1, temperature 1.0: message.reasoning_content",
    )
    passed("chat with extra_body={'top_k': 1} at temperature 1.0 gives the greedy text")

    # Legacy completions on a raw prompt: EOS before max_tokens.
    raw = prompt(expected, "raw_completion")
    equal(raw["kind"], "completion", "expected.json: raw_completion's kind")
    raw_greedy = raw["greedy"]
    completion = client.completions.create(
        model=MODEL,
        prompt=raw["prompt"],
        temperature=0,
        max_tokens=raw_greedy["max_new_tokens"],
    )
    equal(completion.object, "text_completion", "completion: object")
    equal(len(completion.choices), 1, "completion: number of choices")
    equal(
        completion.choices[0].text,
        raw_greedy["text_skip_special_tokens"],
        "completion: text",
    )
    equal(
        completion.choices[0].finish_reason,
        raw_greedy["finish_reason"],
        "completion: finish_reason",
    )
    check_usage(
        completion.usage, len(raw["prompt_ids"]), len(raw_greedy["ids"]), "completion"
    )
    passed(
        f"completions.create (temperature 0): the greedy text, finish_reason "
        f"{completion.choices[0].finish_reason}, {completion.usage.completion_tokens} tokens"
    )

    # A prompt longer than the context: 400 context_length_exceeded.
    try:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "word " * 400}],
            max_tokens=8,
        )
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        equal(e.status_code, 400, "too long: status")
        equal(e.code, "context_length_exceeded", "too long: error code")
        equal(body.get("code"), "context_length_exceeded", "too long: body code")
        equal(e.param, "messages", "too long: error param")
        equal(e.type, "invalid_request_error", "too long: error type")
        passed(f"a too-long prompt raises BadRequestError: {e.code}, param {e.param}")
    else:
        raise CheckFailed("too long: the request succeeded; want BadRequestError")

    print("all openai client checks passed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SOCKET EXPECTED_JSON")
    run(main, sys.argv[1], sys.argv[2])
