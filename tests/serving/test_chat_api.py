"""The OpenAI-compatible request parsing of tunery.serving.chat_api (the server itself is tested with the
official client against a real `tunery serve --openai` process in tests/flows/test_chat_flow.py)."""

from __future__ import annotations

import pytest

from tunery.serving.chat_api import DEFAULT_MAX_TOKENS, RequestError, parse_request

USER = [{"role": "user", "content": "Hello"}]


def test_a_plain_request_is_greedy_with_the_default_budget():
    conversation, max_tokens, temperature, top_p, stream = parse_request({"messages": USER})
    assert conversation["messages"] == USER and conversation["tools"] == []
    assert (max_tokens, temperature, top_p, stream) == (DEFAULT_MAX_TOKENS, 0.0, 1.0, False)


def test_tools_and_sampling_settings_are_taken():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    body = {"messages": USER, "tools": tools, "max_completion_tokens": 5, "temperature": 0.7, "top_p": 0.9}
    conversation, max_tokens, temperature, top_p, stream = parse_request({**body, "stream": True})
    assert conversation["tools"] == tools and (max_tokens, temperature, top_p, stream) == (5, 0.7, 0.9, True)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "non-empty list"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "unknown_role"),
        ({"messages": [*USER, {"role": "assistant", "content": "Hi!"}]}, "nothing to answer"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": True}, "max_tokens"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "temperature": "hot"}, "numbers"),
        ({"messages": USER, "n": 2}, "n=1"),
        ({"messages": USER, "stop": ["\n"]}, "stop"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(body, message):
    with pytest.raises(RequestError, match=message):
        parse_request(body)
