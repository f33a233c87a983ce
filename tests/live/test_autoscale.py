"""Autoscaling between --min-workers and --max-workers, on real load."""

from __future__ import annotations

from support import TESTS
from support.load import Load


def test_pool_grows_under_load_and_shrinks_when_idle(stack):
    """1. a pool with --min-workers 1 --max-workers 3 --scale-cooldown 0.5 and the
    gunicorn-style config, whose nworkers_changed hook logs each change 2. 8 clients keep
    the one worker busy (each request takes 20 ms of CPU) 3. the pool grows to 3, one
    worker at a time, each change logged by the master and by the hook 4. the load stops
    5. the pool shrinks back to 1 6. no request failed meanwhile."""
    front, _, endpoint = stack.front()
    port = int(front.wait_for_log(r"Listening at: http://[\d.]+:(\d+)").group(1))
    pool = stack.handler("apps.echo:router", endpoint, "-c", str(TESTS / "apps" /
                         "gunicorn_conf.py"), "--workers", "1", "--min-workers", "1",
                         "--max-workers", "3", "--scale-cooldown", "0.5")
    front.wait_for_log(r"Worker \d+@\S+ connected")

    def busy_body(body: bytes, query: str) -> str | None:
        return None if body == b"done\n" else f"unexpected body {body[:100]!r}"

    with Load(port, clients=8, seconds=60, path="/busy", check=busy_body) as load:
        pool.wait_for_log(r"Autoscale: 2 worker\(s\), was 1", timeout=30)
        pool.wait_for_log(r"Autoscale: 3 worker\(s\), was 2", timeout=30)
        pool.wait_for_log(r"hook nworkers_changed 2 -> 3")
    assert load.counts.failed == 0, load.failures[:5]
    pool.wait_for_log(r"Autoscale: 1 worker\(s\), was 2", timeout=60)
    assert "Autoscale: 4" not in pool.log()
