"""Renders a chat template the way transformers does, with jinja2.

Usage: render_template.py < CASES_JSON

CASES_JSON is {"template", "bos_token", "eos_token", "cases": [{"messages",
"tools"}]}; the output is a JSON array of the prompts, one per case. The
environment is transformers' (`_compile_jinja_template` in
transformers/utils/chat_template_utils.py): a sandbox with trim_blocks,
lstrip_blocks and loop controls, `raise_exception`, and its `tojson`
(json.dumps, not HTML-escaped). tests/tests/tools.rs compares deepseekd's
renders with these, byte for byte.
"""

import json
import sys

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def main():
    spec = json.load(sys.stdin)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(spec["template"])
    prompts = [
        template.render(
            messages=case["messages"],
            tools=case.get("tools"),
            bos_token=spec["bos_token"],
            eos_token=spec["eos_token"],
            add_generation_prompt=True,
        )
        for case in spec["cases"]
    ]
    json.dump(prompts, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
