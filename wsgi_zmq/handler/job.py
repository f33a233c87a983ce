"""The job layer of a worker: one JOB record through a function, ``FUNC(payload) -> bytes``.

Usage::

    python -m wsgi_zmq.handler --job sample_apps.job:handle            # a sync pool
    python -m wsgi_zmq.handler --job mymod:resize -k gevent --service images -w 4
    python -m wsgi_zmq --job sample_apps.job:handle --job-bind tcp://127.0.0.1:5555

A job pool has every feature of an HTTP pool (``-w``, TTIN/TTOU, ``--min-workers`` and
``--max-workers``, ``timeout``, ``max_requests``, hooks, graceful TERM and HUP, ``-k
gevent``): only the layer differs (``JobLayer``; the worker core is
``wsgi_zmq.handler.worker``). Its READY says READY_JOB (and READY_IDEMPOTENT with
``--job-idempotent``) and names the service it serves: ``--service``, by default the
function's ``__name__``.

The function is checked once, when it is loaded (``load_job``); a function that cannot be
called in one of these ways stops the pool at startup with one line and exit status 2:

==========================================  ============================================
declared as                                  called with, and what it returns
==========================================  ============================================
``def f(payload)``                           the job's one frame (``bytes``); ``bytes``
``def f(frames: list[bytes])``               (first parameter annotated ``list``) the
                                             list of frames; a list (or tuple) of bytes
``def f(payload, ctx)``                      a ``JobContext`` second, in either form
a generator function (or one that returns    each item it yields is sent at once as a
an iterator)                                 partial reply (``bytes``, or a list of bytes
                                             in the list form); what it returns is the
                                             final reply
==========================================  ============================================

What the client gets:

- The return value as the final reply (JOB_REPLY with JOB_FINAL); ``None`` is a final
  reply with no frames; ``bytearray`` and ``memoryview`` are sent as bytes; anything else
  is an error reply, 500 ``f returned str, expected bytes``.
- A job that is not one frame, for a function of the bytes form: 400 ``service S takes one
  frame, got N``.
- Partial replies obey flow control as HTTP body chunks do: at most the JOB's ``window``
  of them before the front grants CREDIT; the generator is not resumed meanwhile.
- The function raising: 500 ``TypeName: message`` (at most 1000 characters); the traceback
  goes to the error log (the payload never does), and the worker serves on.
- A CANCEL (the client went away or timed out) never interrupts the function: a job that
  is running finishes, a generator is closed at its next item, and the final record is
  END with END_ABORT instead of the reply (the front takes any final record of a cancelled
  job as its end; this one spares sending a reply nobody reads).

Every job ends with exactly one final record: JOB_REPLY with JOB_FINAL, ERROR, REJECT
(handed back unstarted, on TERM) or END with END_ABORT.

Hooks: ``pre_request(worker, req)`` and ``post_request(worker, req, environ, resp)`` get
objects shaped like gunicorn's, so a hook written for HTTP works: ``req.method`` is
``"JOB"``, ``req.uri`` and ``req.path`` the service, ``req.query`` ``""``,
``req.headers`` ``[]``; ``environ`` is the small dict below; ``resp.status``
(``"200 OK"``), ``resp.status_code``, ``resp.headers`` (``[]``) and ``resp.sent``.

The access log (``accesslog``) writes one line per job in ``access_log_format``. The atoms
that mean something for a job: ``h`` the client's address, ``r`` ``JOB service``, ``m``
``JOB``, ``U`` the service, ``H`` the dialect the client spoke, ``s`` the status (200, or
the error's: 400, 500, 502; 504 after a timeout; 499 for a cancelled job), ``b``/``B``
the bytes of all reply frames, ``t``, ``T``/``M``/``D``/``L`` (the duration), ``p``,
``{worker}``, ``{queue_ms}``, and ``{KEY}e`` of the environ: ``REQUEST_METHOD``,
``PATH_INFO``, ``RAW_URI``, ``QUERY_STRING``, ``SERVER_PROTOCOL`` (the dialect),
``REMOTE_ADDR`` (the client), ``wsgi_zmq.key`` (its CURVE key). Others print ``-``.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from wsgi_zmq import log as wlog
from wsgi_zmq import protocol
from wsgi_zmq.errors import AppImportError, ProtocolError
from wsgi_zmq.handler.worker import Request, Worker
from wsgi_zmq.handler.wsgi import import_app
from wsgi_zmq.protocol import (
    END_ABORT,
    JOB,
    JOB_FINAL,
    JOB_IDEMPOTENT,
    MAX_JOB_FRAMES,
    READY_IDEMPOTENT,
    READY_JOB,
)

__all__ = ["JobContext", "JobFunction", "JobLayer", "JobRequest", "load_job"]

log = logging.getLogger("wsgi_zmq.error.worker")

#: The longest error message sent for a function that raised.
MAX_ERROR_MESSAGE: Final = 1000
#: The status the access log shows for a job the front cancelled (nginx's "client closed").
CANCELLED: Final = 499
_STATUS_LINES: Final = {200: "200 OK", 400: "400 Bad Request", 499: "499 Cancelled",
                        500: "500 Internal Server Error", 502: "502 Bad Gateway"}
_LIST_ANNOTATION: Final = re.compile(r"(typing\.)?[Ll]ist(\[.*\])?")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a job function that takes a second parameter learns about its job."""

    #: the client's address, as the front saw it
    client: str
    #: the client's CURVE public key (Z85), ``""`` when the job endpoint has no CURVE
    key: str
    #: the request id of this job (unique among the front's exchanges; for logs)
    rid: int
    #: the service the client asked for
    service: str
    #: the protocol the client spoke (``docs/jobs.md``)
    dialect: str
    #: the job may run twice (the front's JOB_IDEMPOTENT, or the pool's job_idempotent)
    idempotent: bool
    #: how many frames the job has
    frames: int


@dataclass(frozen=True, slots=True)
class JobFunction:
    """A job function, checked once at load: how it is called."""

    func: Callable[..., Any]
    #: its ``__name__``: the default service, and the name in error replies
    name: str
    #: it takes the list of frames and returns a list (first parameter annotated ``list``)
    frames: bool
    #: it takes a ``JobContext`` second
    context: bool


def load_job(uri: str) -> JobFunction:
    """Import ``MODULE:FUNC`` (as ``import_app`` does) and check how it can be called.

    Raises ``AppImportError`` with one line for a module or attribute that is missing, a
    target that is not callable, an async function, or one that takes neither
    ``(payload)`` nor ``(payload, ctx)``.
    """
    return inspect_job(import_app(uri), uri)


def inspect_job(func: Callable[..., Any], uri: str) -> JobFunction:
    """The ``JobFunction`` of ``func`` (named ``uri`` in errors); see ``load_job``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise AppImportError(f"{uri}: {name} is async; a job function is a plain function "
                             "or a generator")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # a builtin that keeps its signature to itself
        return JobFunction(func, name, frames=False, context=False)
    one = _binds(signature, 1)
    two = _binds(signature, 2)
    if not one and not two:
        raise AppImportError(f"{uri}: a job function takes (payload) or (payload, ctx); "
                             f"{name}{signature} takes neither")
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    context = two and (not one or len(positional) >= 2)
    frames = bool(positional) and _annotated_list(func, positional[0])
    return JobFunction(func, name, frames, context)


def _binds(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _annotated_list(func: Callable[..., Any], param: inspect.Parameter) -> bool:
    """Is ``param`` annotated ``list`` (``list[bytes]``, ``typing.List[bytes]``)? A string
    annotation (``from __future__ import annotations``) is resolved, or read as text when
    the module cannot resolve it."""
    annotation = param.annotation
    if annotation is param.empty:
        return False
    if isinstance(annotation, str):
        target = func if inspect.isfunction(func) or inspect.ismethod(func) else \
            getattr(func, "__call__", func)  # noqa: B004 (a callable object's method)
        try:
            annotation = typing.get_type_hints(target).get(param.name, annotation)
        except Exception:
            pass
    if isinstance(annotation, str):
        return _LIST_ANNOTATION.fullmatch(annotation.replace(" ", "")) is not None
    return annotation is list or typing.get_origin(annotation) is list


class JobResultError(Exception):
    """The function returned or yielded something that is not a reply."""


class JobRequest(Request):
    """One job exchange."""

    __slots__ = ()

    def can_hand_back(self) -> bool:
        """Always, until it runs: a job is whole in its JOB record."""
        return True

    def replayable(self) -> bool:
        """The front says so (JOB_IDEMPOTENT)."""
        return bool(self.payload[0] & JOB_IDEMPOTENT)

    def send_partial(self, frames: list[bytes]) -> bool:
        """A partial JOB_REPLY, under the front's credit (``send_under_credit``); False if
        the job was cancelled."""
        return self.send_under_credit(protocol.encode_job_reply(self.rid, 0, frames))

    def reply(self, frames: list[bytes]) -> None:
        """The final JOB_REPLY."""
        self.finish_with(protocol.encode_job_reply(self.rid, JOB_FINAL, frames))


class IdempotentJobRequest(JobRequest):
    """A job of a pool whose jobs may all run twice (``job_idempotent``)."""

    __slots__ = ()

    def replayable(self) -> bool:
        return True


class JobLayer:
    """The layer of a worker that hosts a job function; see the module docstring."""

    request_kind = JOB

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.idempotent: bool = worker.cfg.job_idempotent
        self.request_class: type[Request] = (IdempotentJobRequest if self.idempotent
                                             else JobRequest)
        self.job: JobFunction | None = None
        self.service = ""

    @staticmethod
    def load(uri: str) -> JobFunction:
        """The job function ``uri`` (``load_job``)."""
        return load_job(uri)

    def setup(self) -> None:
        """The function and the service it registers."""
        job = self.worker.app
        if not isinstance(job, JobFunction):  # handed over by code, not loaded by uri
            job = inspect_job(job, getattr(job, "__name__", "the job function"))
        self.job = job
        self.service = self.worker.cfg.service or job.name

    def ready(self) -> tuple[int, str]:
        """READY_JOB (and READY_IDEMPOTENT), and the service."""
        return READY_JOB | (READY_IDEMPOTENT if self.idempotent else 0), self.service

    def handle(self, req: Request) -> None:
        """Run the function for one job (see ``Layer.handle``)."""
        assert isinstance(req, JobRequest)
        worker = self.worker
        try:
            head = protocol.decode_job(req.payload)
        except (ProtocolError, ValueError, IndexError) as exc:
            log.warning("Dropped a malformed JOB from %s: %s", req.front.endpoint, exc)
            req.error(502, "malformed job record")
            return
        req.window = req.credit = head.window
        (status, sent), hook_req, started = worker.in_app(
            req, lambda: JobHookRequest(head), lambda: self.run(req, head))
        if worker.post_request is None and worker.access is None:
            return
        environ = {"REQUEST_METHOD": "JOB", "RAW_URI": head.service, "PATH_INFO": head.service,
                   "QUERY_STRING": "", "SERVER_PROTOCOL": head.dialect,
                   "REMOTE_ADDR": head.client, "wsgi_zmq.key": head.key}
        outcome = JobOutcome(status, sent)
        if worker.post_request is not None:
            try:
                worker.post_request(worker, hook_req or JobHookRequest(head), environ, outcome)
            except Exception:
                log.exception("Exception in the post_request hook")
        if worker.access is not None:
            duration = time.monotonic() - started
            self.write_access(worker.access, environ, head, outcome, duration)

    def run(self, req: JobRequest, head: protocol.JobHead) -> tuple[int, int]:
        """Call the function and send its replies; return the status and the reply bytes."""
        job = self.job
        assert job is not None
        frames = head.frames
        if job.frames:
            arg: Any = frames
        elif len(frames) == 1:
            arg = frames[0]
        else:
            req.error(400, f"service {head.service} takes one frame, got {len(frames)}")
            return 400, 0
        try:
            if job.context:
                result = job.func(arg, JobContext(head.client, head.key, req.rid, head.service,
                                                  head.dialect, req.replayable(), len(frames)))
            else:
                result = job.func(arg)
            if type(result) is bytes and not job.frames:  # the common case first
                out = [result]
            elif isinstance(result, Iterator):
                return self.stream(req, result)
            else:
                out = self.frames_of(result, "returned")
        except Exception as exc:
            return self.failed(req, head, exc), 0
        if req.cancelled:
            req.end(END_ABORT, b"")
            return CANCELLED, 0
        req.reply(out)
        return 200, sum(map(len, out))

    def stream(self, req: JobRequest, items: Iterator[Any]) -> tuple[int, int]:
        """Send each item as a partial reply, then the return value as the final one."""
        sent = 0
        try:
            while True:
                try:
                    item = next(items)
                except StopIteration as stop:
                    out = self.frames_of(stop.value, "returned")
                    break
                frames = self.frames_of(item, "yielded")
                if not req.send_partial(frames):
                    req.end(END_ABORT, b"")
                    return CANCELLED, sent
                sent += sum(map(len, frames))
        except Exception as exc:
            return self.failed(req, None, exc), sent
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("Error closing the generator of job %x", req.rid)
        if req.cancelled:
            req.end(END_ABORT, b"")
            return CANCELLED, sent
        req.reply(out)
        return 200, sent + sum(map(len, out))

    def frames_of(self, value: Any, verb: str) -> list[bytes]:
        """The frames of a reply the function ``verb`` ("returned", "yielded"); raises
        ``JobResultError`` for a value of the wrong type."""
        job = self.job
        assert job is not None
        if value is None:
            return []
        if not job.frames:
            if type(value) is bytes:
                return [value]
            if isinstance(value, (bytearray, memoryview)):
                return [bytes(value)]
            raise JobResultError(f"{job.name} {verb} {type(value).__name__}, expected bytes")
        if not isinstance(value, (list, tuple)):
            raise JobResultError(f"{job.name} {verb} {type(value).__name__}, expected a "
                                 "list of bytes")
        if len(value) > MAX_JOB_FRAMES:
            raise JobResultError(f"{job.name} {verb} {len(value)} frames, at most "
                                 f"{MAX_JOB_FRAMES}")
        out = []
        for item in value:
            if type(item) is bytes:
                out.append(item)
            elif isinstance(item, (bytearray, memoryview)):
                out.append(bytes(item))
            else:
                raise JobResultError(f"{job.name} {verb} a list holding "
                                     f"{type(item).__name__}, expected bytes")
        return out

    def failed(self, req: JobRequest, head: protocol.JobHead | None, exc: Exception) -> int:
        """The function raised (or gave a wrong reply): answer 500, log why."""
        worker = self.worker
        worker.quiet += 1  # logging is worker code: SIGALRM must not write meanwhile
        try:
            if isinstance(exc, JobResultError):
                log.error("Job %x: %s", req.rid, exc)
                message = str(exc)
            else:
                log.error("Job %x of service %s raised", req.rid,
                          head.service if head is not None else self.service, exc_info=exc)
                message = f"{type(exc).__name__}: {exc}"
        finally:
            worker.quiet -= 1
        req.error(500, message[:MAX_ERROR_MESSAGE])
        return 500

    def write_access(self, access: wlog.AccessLog, environ: dict[str, Any],
                     head: protocol.JobHead, outcome: JobOutcome, duration: float) -> None:
        """One access line for the job (see the module docstring for its atoms)."""
        access.write(environ, outcome.status, [], outcome.sent, time.time() - duration,
                     duration, head.queue_us / 1000, request_line=f"JOB {head.service}")


class JobHookRequest:
    """A job as ``pre_request`` and ``post_request`` hooks see it, with the attributes of
    gunicorn's request that hooks written for HTTP use."""

    __slots__ = ("method", "uri", "path", "query", "version", "headers", "service",
                 "client")

    def __init__(self, head: protocol.JobHead) -> None:
        self.method = "JOB"
        self.uri = self.path = self.service = head.service
        self.query = ""
        self.version = head.dialect
        self.headers: list[tuple[str, str]] = []
        self.client = head.client


class JobOutcome:
    """What a job's client got, as ``post_request`` sees it (``resp`` of gunicorn)."""

    __slots__ = ("status", "sent")

    def __init__(self, status: int, sent: int) -> None:
        self.status = _STATUS_LINES.get(status, str(status))
        self.sent = sent

    @property
    def status_code(self) -> int:
        return int(self.status[:3])

    @property
    def headers(self) -> list[tuple[str, str]]:
        return []
