"""What the scripts that drive the official `openai` client share: a
client over deepseekd's Unix socket, and checks that stop at the first
mismatch with what differed.

Imported by openai_client.py and openai_logprobs.py (run as scripts, so
this directory is on sys.path).
"""

import sys

import httpx2
import openai

MODEL = "tiny-r1"


class CheckFailed(Exception):
    pass


def check(condition, what, got=None, want=None):
    if not condition:
        detail = what
        if got is not None or want is not None:
            detail += f"\n  got:  {got!r}\n  want: {want!r}"
        raise CheckFailed(detail)


def equal(got, want, what):
    check(got == want, what, got, want)


def passed(what):
    print(f"ok: {what}", flush=True)


def client(socket):
    """The client, talking HTTP over the daemon's socket (httpx2, not httpx)."""
    return openai.OpenAI(
        base_url="http://localhost/v1",
        api_key="unused",
        max_retries=0,
        timeout=60.0,
        http_client=httpx2.Client(transport=httpx2.HTTPTransport(uds=socket)),
    )


def run(main, *args):
    """Runs `main(*args)`; a failed check prints what differed and exits 1."""
    try:
        main(*args)
    except CheckFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
