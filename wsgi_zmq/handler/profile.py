"""``--profile DIR``: profile a sampled share of a pool's requests, one file per request.

``SampledProfiler`` wraps the app of a WSGI worker (``WsgiLayer.setup``). For each request
it draws ``random.random()``: below ``profile_rate`` the request runs through werkzeug's
``ProfilerMiddleware`` (cProfile), which writes one ``pstats`` file into DIR; otherwise it
goes to the plain app, and that one call is all an unprofiled request pays.

A file is named by the request's start time (UTC, to the millisecond), method and path,
then its duration and the worker's pid with a per-process count, so that files from the
workers of a pool, or from one worker within a millisecond, never collide::

    20250101T120304.123Z.GET.shop.items.42.3ms.4242-17.prof

``NAME`` parses one. The method and the path are sanitised (``safe_part``): no ``/``, no
byte outside ``[A-Za-z0-9._-]`` reaches a file name.

What profiling changes for the request it samples (werkzeug's middleware works this way):

- The response is buffered: the app runs, and its whole body is collected, inside the
  profile; the worker then sends it in one piece with a ``Content-Length``. A streamed
  response of a profiled request therefore reaches the client only at its end, and costs
  the worker its size in memory.
- If the app's iterator raises, werkzeug does not call its ``close()``.
- If the file cannot be written (the disk is full...), a warning is logged and the client
  still gets the response; the profile is lost.
- In a gevent worker at most one request at a time is profiled (cProfile profiles a
  thread, and every greenlet of the worker shares it): a request drawn while another is
  profiled is served plainly. The profile of a request that waited (on I/O, on its body)
  includes what other greenlets ran meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from werkzeug.middleware.profiler import ProfilerMiddleware

log = logging.getLogger("wsgi_zmq.error.worker")

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: one profile file's name: (time, method, path, milliseconds, pid, count)
NAME: Final = re.compile(r"(?P<time>\d{8}T\d{6}\.\d{3}Z)\.(?P<method>[A-Za-z0-9_-]+)\."
                         r"(?P<path>[A-Za-z0-9._-]+)\.(?P<ms>\d+)ms\.(?P<pid>\d+)-"
                         r"(?P<count>\d+)\.prof")

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS: Final = re.compile(r"\.{2,}")
_STATE: Final = "wsgi_zmq.profile"  # the environ key of one profiled request's _State


def safe_part(text: str, limit: int = 80, empty: str = "root") -> str:
    """``text`` (a PATH_INFO or a method) as one part of a file name.

    Each run of ``/`` becomes ``.`` (as werkzeug names paths), each run of other
    characters than ASCII letters, digits, ``.``, ``_`` and ``-`` becomes ``_``, runs of
    dots become one and none starts or ends the part; at most ``limit`` characters;
    ``empty`` for nothing left (``/`` is ``root``)."""
    pieces = (_UNSAFE.sub("_", piece) for piece in text.split("/"))
    part = _DOTS.sub(".", ".".join(piece for piece in pieces if piece.strip(".")))
    return part[:limit].strip(".") or empty


def file_name(started: float, method: str, path: str, elapsed_ms: float, pid: int,
              count: int) -> str:
    """The name of the profile of one request (see the module docstring)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    millis = int(started * 1000) % 1000
    return (f"{stamp}.{millis:03d}Z.{safe_part(method, 20, 'NONE')}.{safe_part(path)}."
            f"{elapsed_ms:.0f}ms.{pid}-{count}.prof")


class _State:
    """One profiled request: what the app produced (to answer even if the dump fails)
    and the file it is dumped to, once werkzeug asked for its name."""

    __slots__ = ("body", "path")

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.path: str | None = None


class _Recorded:
    """The app's iterable, keeping a copy of each block it yields; ``close()`` passes on."""

    __slots__ = ("result", "body")

    def __init__(self, result: Iterable[bytes], body: list[bytes]) -> None:
        self.result = result
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        for block in self.result:
            self.body.append(block)
            yield block

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()


class SampledProfiler:
    """A WSGI app that profiles a ``rate`` share of the requests to ``app`` into
    ``directory`` (see the module docstring); ``draw`` is ``random.random`` but for tests.

    ``rate`` 1 profiles every request, 0 none (the setting refuses 0).
    """

    def __init__(self, app: App, directory: str, rate: float,
                 draw: Callable[[], float] = random.random) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"a profile rate is between 0 and 1, not {rate!r}")
        self.app = app
        self.directory = directory
        self.rate = rate
        self.draw = draw
        self.busy = False  # a request is being profiled (gevent: at most one at a time)
        self.counter = itertools.count(1)
        self.profiled = ProfilerMiddleware(
            self._recording, stream=None, profile_dir=directory,
            # werkzeug documents a callable here, but annotates the parameter as str
            filename_format=self._file_name)  # type: ignore[arg-type]

    @classmethod
    def start(cls, app: App, directory: str, rate: float) -> SampledProfiler:
        """Make ``directory`` if it is missing, log what is profiled, wrap ``app``."""
        os.makedirs(directory, exist_ok=True)
        log.info("Profiling %s%% of requests into %s", f"{rate * 100:g}", directory)
        return cls(app, directory, rate)

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self.draw() >= self.rate or self.busy:
            return self.app(environ, start_response)
        self.busy = True
        state = environ[_STATE] = _State()
        try:
            return self.profiled(environ, start_response)
        except OSError as exc:
            if state.path is None:
                raise  # the app's own error
            log.warning("Cannot write the profile %s: %s", state.path, exc)
            try:
                os.unlink(state.path)
            except OSError:
                pass
            return [b"".join(state.body)]
        finally:
            self.busy = False

    def _recording(self, environ: dict[str, Any],
                   start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The app, inside the profile, with a copy of its body kept in the _State."""
        body: list[bytes] = environ[_STATE].body

        def recording_start_response(status: str, headers: list[tuple[str, str]],
                                     exc_info: Any = None) -> Callable[[bytes], Any]:
            write = start_response(status, headers, exc_info)

            def recording_write(data: bytes) -> Any:
                body.append(data)
                return write(data)

            return recording_write

        return _Recorded(self.app(environ, recording_start_response), body)

    def _file_name(self, environ: dict[str, Any]) -> str:
        """werkzeug's ``filename_format``: called once the request is done, just before
        the dump; ``environ["werkzeug.profiler"]`` has its end ``time`` and ``elapsed``
        milliseconds."""
        done = environ["werkzeug.profiler"]
        name = file_name(done["time"] - done["elapsed"] / 1000.0, environ["REQUEST_METHOD"],
                         environ.get("PATH_INFO", ""), done["elapsed"], os.getpid(),
                         next(self.counter))
        state: _State = environ[_STATE]
        state.path = os.path.join(self.directory, name)
        os.makedirs(self.directory, exist_ok=True)  # a cleaner may have removed it
        return name
