"""The official `openai` Python client reads deepseekd's logprobs.

Usage: openai_logprobs.py SOCKET

SOCKET is the daemon's Unix socket, serving fixtures/llm/tiny-r1 under the
model id `tiny-r1`. Greedy chat with `logprobs`/`top_logprobs` and a greedy
completion with `logprobs`, whole and streamed, read through the client's
own types (`choice.logprobs.content[i].top_logprobs`, `choice.logprobs.
token_logprobs`, ...). Each check prints one line when it passes; the first
mismatch prints what differed and exits non-zero. The values themselves
are checked against Python onnxruntime by tests/tests/logprobs.rs.

Run by tests/tests/logprobs.rs with the Python of .venv.
"""

import sys

from client_checks import MODEL, check, client as connect, equal, passed, run

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOP = 3
MAX_TOKENS = 8


def check_token(entry, what):
    check(isinstance(entry.logprob, float) and entry.logprob <= 0, f"{what}: logprob", entry.logprob)
    equal(entry.bytes, list(entry.token.encode("utf-8")), f"{what}: bytes")


def chat_entries(content):
    """What to compare of chat logprobs: tokens, values and alternatives."""
    return [
        (e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs]) for e in content
    ]


def check_chat(client):
    request = dict(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=MAX_TOKENS,
        logprobs=True,
        top_logprobs=TOP,
    )
    response = client.chat.completions.create(**request)
    choice = response.choices[0]
    content = choice.logprobs.content
    equal(len(content), response.usage.completion_tokens, "chat: one entry per token")
    for i, entry in enumerate(content):
        check_token(entry, f"chat: token {i}")
        equal(len(entry.top_logprobs), TOP, f"chat: token {i}: top_logprobs")
        for top in entry.top_logprobs:
            check_token(top, f"chat: token {i}: an alternative")
        values = [t.logprob for t in entry.top_logprobs]
        equal(values, sorted(values, reverse=True), f"chat: token {i}: order")
        # Greedy: the chosen token is the likeliest.
        equal(
            (entry.token, entry.logprob),
            (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob),
            f"chat: token {i} is the first alternative",
        )
    # No `</think>` in these tokens: every one is in the reasoning.
    reasoning = choice.message.model_extra["reasoning_content"]
    equal("".join(e.token for e in content), reasoning, "chat: the tokens spell the reasoning")
    passed(f"chat: {len(content)} tokens with {TOP} alternatives each, in reasoning_content")

    stream = client.chat.completions.create(**request, stream=True)
    joined = []
    for chunk in stream:
        for c in chunk.choices:
            if c.logprobs is not None:
                check(c.logprobs.content, "chat stream: logprobs without content", c.logprobs)
                joined.extend(c.logprobs.content)
    equal(chat_entries(joined), chat_entries(content), "chat stream: the joined logprobs")
    passed("chat stream: the chunks' logprobs join to the whole answer's")


def check_completion(client):
    prompt = "The quick brown fox"
    request = dict(model=MODEL, prompt=prompt, temperature=0, max_tokens=MAX_TOKENS, logprobs=TOP)
    response = client.completions.create(**request)
    choice = response.choices[0]
    logprobs = choice.logprobs
    n = len(logprobs.tokens)
    equal(n, response.usage.completion_tokens, "completion: one entry per token")
    equal(
        (len(logprobs.token_logprobs), len(logprobs.top_logprobs), len(logprobs.text_offset)),
        (n, n, n),
        "completion: lengths",
    )
    equal("".join(logprobs.tokens), choice.text, "completion: the tokens spell the text")
    offset = 0
    for i, token in enumerate(logprobs.tokens):
        equal(logprobs.text_offset[i], offset, f"completion: text_offset {i}")
        offset += len(token)
        top = logprobs.top_logprobs[i]
        check(1 <= len(top) <= TOP + 1, f"completion: top_logprobs {i}", top)
        equal(top.get(token), logprobs.token_logprobs[i], f"completion: token {i} in its top")
        equal(max(top.values()), logprobs.token_logprobs[i], f"completion: token {i} is greedy")
    passed(f"completion: {n} tokens, token_logprobs, top_logprobs and text_offset")

    stream = client.completions.create(**request, stream=True)
    joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for chunk in stream:
        for c in chunk.choices:
            if c.logprobs is not None:
                for key, values in joined.items():
                    values.extend(getattr(c.logprobs, key))
    for key, values in joined.items():
        equal(values, getattr(logprobs, key), f"completion stream: joined {key}")
    passed("completion stream: the chunks' logprobs join to the whole answer's")


def main(socket):
    client = connect(socket)
    check_chat(client)
    check_completion(client)
    print("all logprobs checks passed", flush=True)


if __name__ == "__main__":
    run(main, sys.argv[1])
