"""The official `openai` client sending tools to deepseekd.

Usage: openai_tools.py SOCKET

SOCKET serves tiny-r1 with packaging/templates/deepseek-r1-tools.jinja as its
chat_template.jinja. The client must send tools, tool_choice, an assistant
message with tool_calls (content None) and tool results, whole and streamed,
and parse the answers; tiny-r1's random weights write no call, so each answer
is plain text with finish_reason "length". A forced call (a named
tool_choice) is accepted. Run by
tests/tests/tools.rs.
"""

import sys

import openai

from client_checks import MODEL, CheckFailed, client as connect, equal, passed, run

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "strict": True,
        },
    }
]

HISTORY = [
    {"role": "user", "content": "Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
]


def main(socket):
    client = connect(socket)
    response = client.chat.completions.create(
        model=MODEL,
        messages=HISTORY,
        tools=TOOLS,
        tool_choice="auto",
        parallel_tool_calls=True,
        max_tokens=2,
        temperature=0,
    )
    choice = response.choices[0]
    equal(choice.finish_reason, "length", "whole: finish_reason")
    equal(choice.message.tool_calls, None, "whole: message.tool_calls")
    passed("tools, tool_choice auto, an assistant tool_calls message and a tool result: answered")

    stream = client.chat.completions.create(
        model=MODEL, messages=HISTORY, tools=TOOLS, max_tokens=2, temperature=0, stream=True
    )
    finish = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
    equal(finish, ["length"], "stream: finish_reason")
    passed("the same, streamed")

    # A forced call: the reasoning comes first (it seldom closes within
    # tiny-r1's context), then the call its schema allows.
    forced = client.chat.completions.create(
        model=MODEL,
        messages=HISTORY,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=8,
    )
    choice = forced.choices[0]
    if choice.finish_reason == "tool_calls":
        equal(choice.message.tool_calls[0].function.name, "get_weather", "forced: the call")
    else:
        equal(choice.finish_reason, "length", "forced: finish_reason")
    passed(f"a forced tool_choice is accepted ({choice.finish_reason})")
    print("all openai tools checks passed", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SOCKET")
    run(main, sys.argv[1])
