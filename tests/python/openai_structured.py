"""Structured output through the official `openai` client.

Usage: openai_structured.py SOCKET MODEL SAMPLES

`client.chat.completions.parse` reads each answer into a Pydantic model
(nested objects, an enum, arrays, required and nullable fields, bounded
strings and numbers); SAMPLES requests at temperature 1, eight at a time,
must all parse, and each answer's JSON must also be valid against the
schema by `jsonschema`, which shares no code with the daemon or Pydantic.
Prints one JSON line of counts at the end (finish reasons, tokens).
"""

import enum
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import jsonschema
import pydantic

from client_checks import check, client, equal, passed, run


class Kind(str, enum.Enum):
    invoice = "invoice"
    receipt = "receipt"
    statement = "statement"


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=8, pattern=r"^[A-Za-z ]+$")
    country: str = pydantic.Field(pattern=r"^[A-Z]{2}$")


class Item(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=8, pattern=r"^[A-Za-z ]+$")
    qty: int = pydantic.Field(ge=1, le=99)
    cents: int = pydantic.Field(ge=0, le=99999)


class Document(pydantic.BaseModel):
    """Nested objects, an enum, an array, required and nullable fields,
    patterns: strings (ASCII, a token a character at most) and numbers
    bounded, so that a model with random weights (the tiny fixture, whose
    vocabulary is nearly bytes) ends its JSON within its context of 256
    tokens."""

    kind: Kind
    issuer: Address
    items: list[Item] = pydantic.Field(min_length=1, max_length=2)
    urgent: bool
    ref: Optional[str] = pydantic.Field(max_length=6, pattern=r"^[A-Z0-9-]+$")


PROMPT = "Acme, Leeds GB: 3 cogs at 4.50. JSON:"


def main(socket, model, samples):
    api = client(socket)
    schema = Document.model_json_schema()

    def ask(seed):
        return api.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            response_format=Document,
            temperature=1.0,
            seed=seed,
            max_tokens=210,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(samples)))
    reasons = {}
    tokens = 0
    longest = 0
    for seed, completion in enumerate(answers):
        choice = completion.choices[0]
        reasons[choice.finish_reason] = reasons.get(choice.finish_reason, 0) + 1
        tokens += completion.usage.completion_tokens
        longest = max(longest, completion.usage.completion_tokens)
        equal(choice.finish_reason, "stop", f"seed {seed}: the JSON ended the answer")
        check(
            isinstance(choice.message.parsed, Document),
            f"seed {seed}: parsed into the Pydantic model",
            choice.message.parsed,
        )
        try:
            jsonschema.validate(json.loads(choice.message.content), schema)
        except jsonschema.ValidationError as e:
            check(False, f"seed {seed}: valid against the schema", e.message)
    passed(f"{samples} sampled answers parsed and schema-valid")
    print(json.dumps({"finish_reasons": reasons, "completion_tokens": tokens, "longest": longest}))


if __name__ == "__main__":
    run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
