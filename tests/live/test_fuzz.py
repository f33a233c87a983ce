"""Live fuzzing of the front with Hypothesis: whatever bytes a client sends, the front
answers them and serves on.

One all-in-one server (``apps.echo:router``, one worker, ``--keep-alive 0.5``) serves the
module. Each example sends one generated stream on a fresh connection (whole, byte by byte
or in fragments; maybe closing early) and must pass every check of ``support.fuzz``: its
answers parse as HTTP/1.1, refusals are 4xx/5xx with a body, ``Connection: close`` is kept,
nothing is left unanswered; then a fresh ``GET /`` gets 200 within 1 s, the front kept its
pid and logged no traceback. After each fuzzing test the front's RSS is at most its idle
RSS + 8 MiB. A case that breaks the front leaves it to be replaced before the next case,
so that shrinking always meets a working front.

Each kind of failure is its own exception class, so Hypothesis reports (and shrinks) each
kind separately. Shrinking stops after ``SHRINK_SECONDS``: the smallest failing case found
by then is reported. Every shrunk failure found so far is kept in ``REGRESSIONS``.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings

from support.fuzz import (
    MEMORY_SLACK,
    Case,
    FuzzFailure,
    FuzzServer,
    Message,
    Plan,
    cases,
    check_case,
    failure,
    make_message,
    mutated_streams,
    seed_streams,
    valid_stream,
    valid_streams,
)

SHRINK_SECONDS = 30.0
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    fuzzed = FuzzServer(tmp_path_factory.mktemp("fuzz"))
    try:
        fuzzed.start()
        yield fuzzed
    finally:
        fuzzed.stop()


class Runner:
    """Runs the cases of one Hypothesis test. A case that failed once fails again without
    being sent (Hypothesis replays it to report it); once ``SHRINK_SECONDS`` passed after
    the first failure, new cases pass unsent, which ends the shrinking."""

    def __init__(self, server: FuzzServer) -> None:
        self.server = server
        self.failed: dict[Case, FuzzFailure] = {}
        self.first_failure = 0.0

    def __call__(self, case: Case) -> None:
        known = self.failed.get(case)
        if known is None:
            if self.first_failure and time.monotonic() - self.first_failure > SHRINK_SECONDS:
                return
            outcome, problems = check_case(self.server, case)
            if not problems:
                return
            known = self.failed[case] = failure(case, problems, outcome)
            self.first_failure = self.first_failure or time.monotonic()
        raise type(known)(*known.args)  # one raise site: Hypothesis tells kinds by class


def check_memory(server: FuzzServer) -> None:
    server.ensure_ready()
    growth = server.memory_growth()
    assert growth <= MEMORY_SLACK, (f"the front's RSS grew by {growth / 2**20:.1f} MiB over "
                                    f"its idle {server.idle_rss / 2**20:.1f} MiB")


def test_valid_streams_get_their_answers(server):
    """1. send pipelined valid requests of every kind, whole, byte by byte or in fragments
    2. each gets the echo router's 200 with the right body, in order; a closing request
    ends the connection 3. the front serves on."""
    run = Runner(server)

    @settings(FUZZ, max_examples=70)
    @given(cases(valid_streams()))
    def fuzz(case):
        run(case)

    fuzz()
    check_memory(server)


def test_mutated_requests_are_answered_and_the_front_serves_on(server):
    """1. send valid requests under request-level and byte-level mutations 2. every answer
    parses, a refusal is a 4xx/5xx with a body and Connection: close is kept 3. a fresh
    GET / is answered 200 within 1 s and the log has no traceback 4. RSS stays within idle
    + 8 MiB."""
    run = Runner(server)

    @settings(FUZZ, max_examples=160)
    @given(cases(mutated_streams()))
    def fuzz(case):
        run(case)

    fuzz()
    check_memory(server)


def test_mutated_corpus_is_answered_and_the_front_serves_on(server):
    """1. send the parser's corpus (tests/requests) under byte mutations 2. as above."""
    run = Runner(server)

    @settings(FUZZ, max_examples=70)
    @given(cases(seed_streams()))
    def fuzz(case):
        run(case)

    fuzz()
    check_memory(server)


def valid_case(messages: list[Message], plan: Plan) -> Case:
    data, expected = valid_stream(messages)
    return Case(data, plan, expected)


_CHUNKED_ECHO = b"GET /echo HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
_EARLY = make_message(b"PUT", b"/", body=b"hello", framing="length")  # answered unread

#: Shrunk failures found by the fuzzing above, kept as plain cases. The comment says what
#: happened, and in which tree: 927bfae (the front before the lingering close), or the
#: working tree of 2026-12-01 09:30 (HEAD db5e2c9 and uncommitted changes).
REGRESSIONS = [
    # 927bfae: the 400 comes, then no one is answered any more (the request had been
    # handed to a worker when its trailer was refused)
    pytest.param(Case(b"POST /p HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked"
                      b"\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n"),
                 id="trailer-content-length-after-dispatch"),
    # 927bfae: as above, for chunk data not followed by CRLF
    pytest.param(Case(_CHUNKED_ECHO + b"1\r\n\r\n"), id="bad-chunk-end-after-dispatch"),
    # 927bfae: as above with the client closing at once: IndexError: pop from an empty
    # deque (Dispatcher._release), then struct.error in every heartbeat (queued < 0)
    pytest.param(Case(_CHUNKED_ECHO + b"1\r\n\r\n", Plan("whole", close_at=74)),
                 id="refusal-after-dispatch-then-client-close"),
    # 927bfae: the 400, then a reset: the front closed with unread input
    pytest.param(Case(b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 100, Plan("bytewise")),
                 id="refusal-with-unread-input-resets"),
    # both trees: a request answered before its body came (the app did not read it); when
    # the body and a pipelined GET arrive, the front closes without answering the GET and
    # without having said Connection: close
    pytest.param(valid_case([_EARLY, make_message()], Plan("fragments", (56,), pause=0.05)),
                 id="early-answer-drops-the-next-request"),
    # both trees, bytewise (timing-dependent: fails most runs)
    pytest.param(valid_case([make_message(b"GET", b"/", body=b"\x00", framing="length"),
                             make_message()], Plan("bytewise")),
                 id="early-answer-drops-the-next-request-bytewise"),
    # working tree: an Upgrade request (served as HTTP/1.1) and, in the same read, one the
    # front refuses: HttpParserUpgrade escapes Connection._on_readable (Traceback); neither
    # is answered and the connection stays open
    pytest.param(Case(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                      b"\r\nGET / HTTP/1.1\r\n\r\n"), id="upgrade-then-refused-request"),
    # bench/fuzz.py: a chunked request answered before its body came, then CONNECT; the
    # front closed after the answer (it cannot skip a chunked body) without saying so, and
    # the CONNECT went unanswered; the answer now says Connection: close
    pytest.param(Case(b"POST / HTTP/1.1\r\nHost: example.org\r\nTransfer-Encoding: Chunked"
                      b"\r\n\r\n4\r\nWiki\r\n0\r\n\r\nCONNECT example.org:443 HTTP/1.1\r\n"
                      b"Host: example.org:443\r\n\r\n", Plan("bytewise")),
                 id="early-answer-to-a-chunked-request-says-close"),
]


@pytest.mark.parametrize("case", REGRESSIONS)
def test_regression(server, case):
    """1. send a stream that once broke a property 2. every check of the fuzzing holds."""
    outcome, problems = check_case(server, case)
    if problems:
        raise failure(case, problems, outcome)


def test_plan_repr_is_a_reproduction():
    """The failure reports show cases as code that recreates them."""
    case = Case(b"GET / HTTP/1.1\r\n\r\n", Plan("fragments", (3,), close_at=5))
    assert repr(case) == r"Case(b'GET / HTTP/1.1\r\n\r\n', Plan('fragments', cuts=(3,), " \
                         r"close_at=5))"
