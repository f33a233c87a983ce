"""A job function: bytes in, bytes out, no HTTP.

A handler pool serves it, as the service ``handle`` (its name; ``--service`` renames it),
to the front whose backend it connects to::

    python -m wsgi_zmq.handler --job sample_apps.job:handle --connect tcp://127.0.0.1:5556

or, front and pool together, with a job endpoint for clients::

    python -m wsgi_zmq --job sample_apps.job:handle --job-bind tcp://127.0.0.1:5555
    python -m wsgi_zmq.client --service handle tcp://127.0.0.1:5555 '{"text": "Hello"}'

A payload it cannot read raises ``ValueError``: the client gets an error reply, 500
``JSONDecodeError: ...``, and the worker serves on. It is an ordinary function, so it can be
tried directly::

    >>> handle(b'{"text": "Hello"}')
    b'{"text": "HELLO", "reversed": "olleH", "length": 5}'
"""

from __future__ import annotations

import json


def handle(payload: bytes) -> bytes:
    """Transform one JSON message: ``{"text": str}`` -> its text upper-cased and reversed.

    Accepts the UTF-8 encoding of a JSON object with a string field ``text``; returns the
    UTF-8 encoding of ``{"text": <upper-cased>, "reversed": <reversed>, "length": <number of
    characters>}``. Raises ``ValueError`` (``json.JSONDecodeError`` and
    ``UnicodeDecodeError`` are subclasses) for any other payload. It keeps no state between
    calls, so any number of workers may run it.
    """
    message = json.loads(payload)
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        raise ValueError('the payload must be a JSON object with a string "text"')
    text = message["text"]
    result = {"text": text.upper(), "reversed": text[::-1], "length": len(text)}
    return json.dumps(result, ensure_ascii=False).encode()
