"""Drives Parley's OpenAI-compatible endpoint with the official `openai` package.

Usage: openai_client.py BASE_URL API_KEY MODEL QUESTION
Prints one line per check; exits non-zero when a check fails.
"""

import sys

import openai
from openai import OpenAI

base_url, api_key, model, question = sys.argv[1:5]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)

models = client.models.list()
assert any(entry.id == model for entry in models.data), [entry.id for entry in models.data]
print("models ok", len(models.data))

messages = [{"role": "user", "content": question}]
reply = client.chat.completions.create(model=model, messages=messages)
content = reply.choices[0].message.content
assert content and content.strip(), reply
assert reply.choices[0].finish_reason in ("stop", "length"), reply
assert reply.usage.completion_tokens > 0, reply.usage
print("completion ok", reply.choices[0].finish_reason, reply.usage.completion_tokens)

pieces = []
finish = None
for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
assert "".join(pieces).strip(), pieces
assert finish in ("stop", "length"), finish
print("stream ok", len(pieces), finish)

try:
    OpenAI(base_url=base_url, api_key="pk_not_a_real_key", max_retries=0).chat.completions.create(
        model=model, messages=messages
    )
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    print("wrong key refused")

try:
    client.chat.completions.create(model="ag_doesnotexist", messages=messages)
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError:
    print("unknown model refused")
