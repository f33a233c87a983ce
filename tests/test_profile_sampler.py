"""``wsgi_zmq.handler.profile`` in-process: the file names (sanitised, unique, parsed back by
``NAME``), the sampler (rate 0, a share, rate 1, one at a time), what a profiled request
answers (the same body, write() included; a failed dump still answers), and the two
settings' validators."""

from __future__ import annotations

import os
import pstats
import random
import time
from pathlib import Path

import pytest

from wsgi_zmq.config import Config
from wsgi_zmq.errors import ConfigError
from wsgi_zmq.handler.profile import NAME, SampledProfiler, file_name, safe_part


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, ", b"world!\n"]


def writer(environ, start_response):
    write = start_response("200 OK", [])
    write(b"written ")
    return iter([b"yielded"])


def environ_for(path="/", method="GET"):
    return {"REQUEST_METHOD": method, "PATH_INFO": path}


def call(app, environ=None):
    seen = []

    def start_response(status, headers, exc_info=None):
        seen.append(status)
        return lambda data: seen.append(("write", data))

    body = b"".join(app(environ or environ_for(), start_response))
    return seen, body


# -- file names ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "part"), [
    ("/", "root"),
    ("", "root"),
    ("/shop/items/42", "shop.items.42"),
    ("//a///b/", "a.b"),
    ("/static/style.css", "static.style.css"),
    ("/../../etc/passwd", "etc.passwd"),
    ("/a/../b", "a.b"),
    ("/.hidden/x.", "hidden.x"),
    ("/caf\u00c3\u00a9/x y/%2F", "caf_.x_y._2F"),  # PATH_INFO is latin-1: café's bytes
    ("/nul\x00/tab\t/back\\slash", "nul_.tab_.back_slash"),
    ("/" + "a" * 300, "a" * 80),
])
def test_safe_part_keeps_only_safe_characters(text, part):
    assert safe_part(text) == part


def test_safe_part_of_anything_is_a_safe_non_empty_name_part():
    draw = random.Random(7)
    alphabet = "/.\\\x00\n %?*:<>|\"'azAZ09_-\u00e9\u00ff"
    for _ in range(2000):
        text = "".join(draw.choice(alphabet) for _ in range(draw.randrange(0, 40)))
        part = safe_part(text)
        assert part and len(part) <= 80 and "/" not in part and ".." not in part
        assert not part.startswith(".") and not part.endswith(".")
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in part), part


def test_file_name_is_time_method_path_duration_pid_and_count():
    started = 1735732984.123456  # 2025-01-01 12:03:04.123 UTC
    name = file_name(started, "GET", "/shop/items/42", 3.4, 4242, 17)
    assert name == "20250101T120304.123Z.GET.shop.items.42.3ms.4242-17.prof"
    match = NAME.fullmatch(name)
    assert match is not None
    assert match.group("time", "method", "path", "ms", "pid", "count") == (
        "20250101T120304.123Z", "GET", "shop.items.42", "3", "4242", "17")
    # a path that looks like the fields that follow it still parses back right
    tricky = file_name(started, "M-SEARCH", "/5ms/12-3.prof", 0.2, 1, 2)
    assert NAME.fullmatch(tricky).group("method", "path", "ms", "pid", "count") == (
        "M-SEARCH", "5ms.12-3.prof", "0", "1", "2")
    assert NAME.fullmatch(file_name(started, "", "", 0, 1, 1)).group("method") == "NONE"


# -- the sampler --------------------------------------------------------------------------

def test_rate_zero_profiles_nothing_and_rate_one_everything(tmp_path):
    never = SampledProfiler(hello, str(tmp_path), 0.0)
    for _ in range(200):
        assert call(never)[1] == b"Hello, world!\n"
    assert list(tmp_path.iterdir()) == []
    always = SampledProfiler(hello, str(tmp_path), 1.0)
    for _ in range(20):
        assert call(always, environ_for("/a/b")) == (["200 OK"], b"Hello, world!\n")
    files = sorted(tmp_path.iterdir())
    assert len(files) == 20  # 20 requests within a few ms: 20 distinct names
    for path in files:
        match = NAME.fullmatch(path.name)
        assert match and match["method"] == "GET" and match["path"] == "a.b"
        assert int(match["pid"]) == os.getpid()
        assert pstats.Stats(str(path)).total_calls > 0
    assert sorted(int(NAME.fullmatch(p.name)["count"]) for p in files) == list(range(1, 21))


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan")])
def test_a_rate_out_of_bounds_is_refused(tmp_path, rate):
    with pytest.raises(ValueError, match="between 0 and 1"):
        SampledProfiler(hello, str(tmp_path), rate)


def test_a_seeded_draw_profiles_exactly_the_requests_drawn_below_the_rate(tmp_path):
    draws = random.Random(1234)
    replay = random.Random(1234)
    expected = sum(replay.random() < 0.25 for _ in range(400))
    sampler = SampledProfiler(hello, str(tmp_path), 0.25, draw=draws.random)
    for _ in range(400):
        call(sampler)
    assert len(list(tmp_path.iterdir())) == expected
    assert 60 < expected < 140


def test_the_draw_is_compared_with_the_rate(tmp_path):
    values = iter([0.0999, 0.1, 0.5, 0.0])
    sampler = SampledProfiler(hello, str(tmp_path), 0.1, draw=lambda: next(values))
    counts = []
    for _ in range(4):
        call(sampler)
        counts.append(len(list(tmp_path.iterdir())))
    assert counts == [1, 1, 1, 2]


def test_a_request_drawn_while_another_is_profiled_is_served_plainly(tmp_path):
    """What a gevent worker needs: cProfile profiles the thread, so one at a time."""
    inner_results = []

    def nested(environ, start_response):
        if environ["PATH_INFO"] == "/outer":
            inner_results.append(call(sampler, environ_for("/inner")))
        return hello(environ, start_response)

    sampler = SampledProfiler(nested, str(tmp_path), 1.0)
    assert call(sampler, environ_for("/outer"))[1] == b"Hello, world!\n"
    assert inner_results == [(["200 OK"], b"Hello, world!\n")]
    [only] = tmp_path.iterdir()
    assert NAME.fullmatch(only.name)["path"] == "outer"
    assert not sampler.busy
    call(sampler, environ_for("/again"))
    assert len(list(tmp_path.iterdir())) == 2


def test_a_profiled_response_is_the_same_body_buffered_write_included(tmp_path):
    sampler = SampledProfiler(writer, str(tmp_path), 1.0)
    seen, body = call(sampler)
    assert seen == ["200 OK"] and body == b"written yielded"
    assert len(list(tmp_path.iterdir())) == 1


def test_the_app_error_propagates_and_the_next_request_is_profiled(tmp_path):
    def broken(environ, start_response):
        raise OSError("the app's own")

    sampler = SampledProfiler(broken, str(tmp_path), 1.0)
    with pytest.raises(OSError, match="the app's own"):
        call(sampler)
    assert not sampler.busy and list(tmp_path.iterdir()) == []


def test_a_dump_that_fails_still_answers_the_request(tmp_path, caplog):
    sampler = SampledProfiler(writer, str(tmp_path), 1.0)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    sampler.directory = str(blocker / "sub")  # makedirs fails: NotADirectoryError
    sampler.profiled._profile_dir = sampler.directory
    with caplog.at_level("WARNING", "wsgi_zmq.error.worker"):
        seen, body = call(sampler)
    assert seen == ["200 OK"] and body == b"written yielded"
    assert "Cannot write the profile" in caplog.text
    assert not sampler.busy


def test_start_makes_the_directory_and_logs_the_share(tmp_path, caplog):
    target = tmp_path / "a" / "b"
    with caplog.at_level("INFO", "wsgi_zmq.error.worker"):
        SampledProfiler.start(hello, str(target), 0.05)
    assert target.is_dir()
    assert f"Profiling 5% of requests into {target}" in caplog.text


def test_the_directory_is_made_again_if_a_cleaner_removed_it(tmp_path):
    target = tmp_path / "prof"
    sampler = SampledProfiler.start(hello, str(target), 1.0)
    target.rmdir()
    call(sampler)
    assert len(list(target.iterdir())) == 1


def test_an_unprofiled_request_costs_little():
    """Not a benchmark: only that the wrapper of a never-drawn request is one cheap call
    (well under 5 us on any machine the suite runs on)."""
    sampler = SampledProfiler(lambda e, s: (), "/nonexistent", 1e-12)

    def start_response(*args):
        return None

    env = environ_for()
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(10000):
            sampler(env, start_response)
        best = min(best, (time.perf_counter() - began) / 10000)
    assert best < 5e-6


# -- the settings -------------------------------------------------------------------------

def test_profile_setting_accepts_a_writable_or_makeable_directory(tmp_path):
    cfg = Config("handler")
    assert cfg.profile is None and cfg.profile_rate == 0.01
    cfg.set("profile", str(tmp_path))
    assert cfg.profile == str(tmp_path)
    cfg.set("profile", str(tmp_path / "new" / "deeper"))
    assert cfg.profile == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # made by the workers, not by the check
    cfg.set("profile", "")
    assert cfg.profile is None
    assert not Config("front").accepts("profile")
    assert Config("all").accepts("profile") and Config("all").accepts("profile_rate")


def test_profile_setting_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"Invalid value for profile: .*file is not a "
                                          r"directory"):
        Config("handler").set("profile", str(tmp_path / "file" / "prof"))
    with pytest.raises(ConfigError, match="is not a directory"):
        Config("handler").set("profile", str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_profile_setting_refuses_a_read_only_directory(tmp_path: Path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError, match="cannot be made: .*locked is not writable"):
            Config("handler").set("profile", str(locked / "prof"))
        with pytest.raises(ConfigError, match="locked is not writable"):
            Config("handler").set("profile", str(locked))
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.5", "nan", "inf", "x", "", True, None])
def test_profile_rate_is_above_zero_and_at_most_one(value):
    with pytest.raises(ConfigError, match="Invalid value for profile_rate: .*greater than 0 "
                                          "and at most 1"):
        Config("handler").set("profile_rate", value)


@pytest.mark.parametrize(("value", "rate"), [("1", 1.0), ("0.25", 0.25), (1e-6, 1e-6),
                                             (1, 1.0)])
def test_profile_rate_accepts_shares(value, rate):
    cfg = Config("handler")
    cfg.set("profile_rate", value)
    assert cfg.profile_rate == rate
