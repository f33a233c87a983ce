"""The job that ``bench/jobs.py`` measures: ``echo(payload) -> payload``.

wsgi_zmq serves it as ``python -m wsgi_zmq.handler --job job_echo:echo --service echo`` with
``bench/`` on the import path; the minimal broker's and majortomo's workers in
``bench/jobs.py`` call the same function, so that every system runs the same job.
"""

from __future__ import annotations


def echo(payload: bytes) -> bytes:
    """Return ``payload`` unchanged."""
    return payload
