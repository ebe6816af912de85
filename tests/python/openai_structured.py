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
    street: str = pydantic.Field(max_length=40)
    city: str = pydantic.Field(max_length=30)
    country_code: str = pydantic.Field(pattern=r"^[A-Z]{2}$")


class Item(pydantic.BaseModel):
    description: str = pydantic.Field(max_length=40)
    quantity: int = pydantic.Field(ge=1, le=1000)
    unit_price: float = pydantic.Field(ge=0, le=100000)


class Document(pydantic.BaseModel):
    kind: Kind
    issuer: Address
    items: list[Item] = pydantic.Field(min_length=1, max_length=4)
    urgent: bool
    reference: Optional[str] = pydantic.Field(max_length=20)


PROMPT = (
    "Extract the document as JSON: Invoice from Acme Ltd, 12 Mill Road, "
    "Leeds, GB. 3 widgets at 4.50 each and 1 gadget at 12.00. Not urgent. "
    "Reference INV-2041."
)


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
            max_tokens=400,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, range(samples)))
    reasons = {}
    tokens = 0
    for seed, completion in enumerate(answers):
        choice = completion.choices[0]
        reasons[choice.finish_reason] = reasons.get(choice.finish_reason, 0) + 1
        tokens += completion.usage.completion_tokens
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
    print(json.dumps({"finish_reasons": reasons, "completion_tokens": tokens}))


if __name__ == "__main__":
    run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
