"""``--log-format json``: the error and access logs as one JSON object per line."""

from __future__ import annotations

import json

from support import exchange, get, poll_until


def test_error_and_access_logs_are_json_lines(stack, tmp_path):
    """1. all-in-one with --log-format json and an access log file 2. a request with a
    cookie and an app crash 3. every error-log line and every access line parses as JSON
    with the documented fields 4. the cookie's value is in neither log."""
    access = tmp_path / "access.log"
    proc, port = stack.all_in_one("apps.echo:router", "--log-format", "json",
                                  "--access-logfile", str(access))
    [ok], _ = exchange(port, get("/echo?x=1", "Cookie: session=s3cr3t\r\n"
                                 "User-Agent: probe/1\r\n"))
    [crashed], _ = exchange(port, get("/crash"))
    assert (ok.status, crashed.status) == (200, 500)
    poll_until(lambda: access.exists() and len(access.read_text().splitlines()) >= 2, 10)
    lines = [json.loads(line) for line in access.read_text().splitlines()]
    first = next(line for line in lines if line["uri"] == "/echo?x=1")
    assert first["method"] == "GET" and first["status"] == 200
    assert first["protocol"] == "HTTP/1.1" and first["user_agent"] == "probe/1"
    assert first["remote_addr"] == "127.0.0.1" and first["bytes"] > 0
    assert (first["pool"], first["version"]) == ("default", "-")
    assert set(first) == {"time", "remote_addr", "user", "method", "uri", "protocol",
                          "status", "bytes", "referer", "user_agent", "duration_s",
                          "queue_ms", "worker", "pool", "version", "pid"}
    assert any(line["status"] == 500 for line in lines)
    poll_until(lambda: "Traceback" in proc.log() or "exc_info" in proc.log(), 10)
    errors = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
    assert {"time", "level", "pid", "logger", "message"} <= set(errors[0])
    assert any("exc_info" in entry for entry in errors)  # the app's traceback, as a field
    assert all(entry["time"].endswith("Z") for entry in errors)
    assert "s3cr3t" not in proc.log() and "s3cr3t" not in access.read_text()
