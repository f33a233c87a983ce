"""Routes, pool versions, weights, standby and stickiness, with a real front and real handler
pools: requests reach the pool their path and host name, SCRIPT_NAME is right for an app
mounted under a prefix, versions split a pool's traffic by weight, a request may ask for a
version, a client may stick to one, and promoting and rolling back under load lose nothing."""

from __future__ import annotations

import collections
import json
import signal

from support import exchange, get, logged_pids, poll_until, scenarios
from support.load import Load
from wsgi_zmq.control import call


def routed_front(stack, tmp_path, *args):
    path = str(tmp_path / "front.ctl")
    front, port, endpoint = stack.front("--control-socket", path, *args)
    return front, port, endpoint, path


def pid_of(port, target="/", extra=""):
    answer = exchange(port, get(target, extra))[0][0]
    assert answer.status == 200, (answer.status, answer.body[:300])
    return json.loads(answer.body)["pid"], answer


def wait_workers(front, count):
    front.wait_for_log(r"Worker \d+@\S+ connected", count=count)


def test_two_apps_by_path_and_by_host(stack, tmp_path):
    """1. routes: /shop to pool shop (a Flask app, prefix stripped), shop.example.com to
    shop too, *.api.example.com to pool api; the rest to default 2. each request reaches
    the pool its route names; /shopping is not under /shop 3. the Flask app builds its URLs
    under /shop (SCRIPT_NAME), and not when it is reached by host."""
    front, port, endpoint, _ = routed_front(
        stack, tmp_path, "--route", "/shop=shop:strip", "--route", "shop.example.com/=shop",
        "--route", "*.api.example.com/=api")
    default = stack.handler("apps.echo:echo", endpoint)
    shop = stack.handler("apps.flask_mounted:app", endpoint, "--pool", "shop")
    api = stack.handler("apps.echo:echo", endpoint, "--pool", "api")
    wait_workers(front, 3)
    answer = exchange(port, get("/shop/items/pen"))[0][0]
    assert answer.status == 200
    body = json.loads(answer.body)
    assert body == {"url": "/shop/items/pen", "script_name": "/shop", "path": "/items/pen",
                    "app": "flask"}
    redirect = exchange(port, get("/shop"))[0][0]  # PATH_INFO "": Flask adds the slash
    assert redirect.status == 308 and redirect.header("Location").endswith("/shop/")
    body = json.loads(exchange(port, get("/shop/"))[0][0].body)
    assert body["url"] == "/shop/" and body["script_name"] == "/shop"
    assert pid_of(port, "/shopping")[0] in logged_pids(default)
    assert pid_of(port, "/")[0] in logged_pids(default)
    by_host = exchange(port, b"GET /items/ink HTTP/1.1\r\nHost: Shop.Example.com:8080\r\n\r\n")
    body = json.loads(by_host[0][0].body)
    assert body["url"] == "/items/ink" and body["script_name"] == ""
    answer = exchange(port, b"GET /v1/x HTTP/1.1\r\nHost: eu.api.example.com\r\n\r\n")[0][0]
    assert json.loads(answer.body)["pid"] in logged_pids(api)
    answer = exchange(port, b"GET /v1/x HTTP/1.1\r\nHost: api.example.com\r\n\r\n")[0][0]
    assert json.loads(answer.body)["pid"] in logged_pids(default)  # not a subdomain
    assert shop.alive()


def test_a_route_to_a_pool_without_workers_waits_then_503(stack, tmp_path):
    """A route whose pool has no worker: the request waits up to the queue timeout, then
    503; it is served if a worker of the pool connects in time; other routes serve on."""
    front, port, endpoint, _ = routed_front(stack, tmp_path, "--route", "/late=late",
                                            "--queue-timeout", "1")
    stack.handler("apps.echo:echo", endpoint)
    wait_workers(front, 1)
    answer = exchange(port, get("/late/x"))[0][0]
    assert answer.status == 503 and b"pool late" in answer.body
    assert pid_of(port, "/")[1].status == 200
    late = stack.handler("apps.echo:echo", endpoint, "--pool", "late")
    wait_workers(front, 2)
    assert pid_of(port, "/late/x")[0] in logged_pids(late)


def test_weights_split_a_pool_90_10_over_2000_requests(stack, tmp_path):
    """Versions v1 (weight 90) and v2 (weight 10) of one pool: of 2,000 requests, v2
    answers 10% within a few percent; ``ctl weight`` to 50 makes it half, and 0 none."""
    front, port, endpoint, path = routed_front(stack, tmp_path)
    v1 = stack.handler("apps.echo:echo", endpoint, "--pool-version", "v1", "--weight", "90")
    v2 = stack.handler("apps.echo:echo", endpoint, "--pool-version", "v2", "--weight", "10")
    wait_workers(front, 2)

    def shares(count):
        pids = collections.Counter()
        for start in range(0, count, 100):
            batch = b"".join(get(f"/?n={n}") for n in range(start, start + 100))
            responses, _ = exchange(port, batch, count=100, timeout=30)
            assert len(responses) == 100 and all(r.status == 200 for r in responses)
            pids.update(json.loads(r.body)["pid"] for r in responses)
        return sum(pids[p] for p in logged_pids(v2)) / count

    assert abs(shares(2000) - 0.10) < 0.03
    assert call(path, "weight", ["default", "v2", "90"])["weight"] == 90
    assert abs(shares(400) - 0.5) < 0.05
    call(path, "weight", ["default", "v2", "0"])
    assert shares(200) == 0
    assert v1.alive() and v2.alive()


def test_a_request_asks_for_a_standby_version_by_header_or_cookie(stack, tmp_path):
    """v2 starts in standby: plain requests go to v1; one with ``X-Version: v2`` or the
    cookie ``wv=v2`` goes to v2; asking for a version nobody runs is ignored."""
    front, port, endpoint, path = routed_front(stack, tmp_path, "--version-header",
                                               "X-Version", "--version-cookie", "wv")
    v1 = stack.handler("apps.echo:echo", endpoint, "--pool-version", "v1")
    v2 = stack.handler("apps.echo:echo", endpoint, "--pool-version", "v2", "--standby")
    wait_workers(front, 2)
    for _ in range(20):
        assert pid_of(port)[0] in logged_pids(v1)
    assert pid_of(port, extra="X-Version: v2\r\n")[0] in logged_pids(v2)
    assert pid_of(port, extra="Cookie: a=b; wv=v2\r\n")[0] in logged_pids(v2)
    assert pid_of(port, extra="X-Version: v9\r\n")[0] in logged_pids(v1)
    versions = {v["version"]: v for v in call(path, "status")["versions"]}
    assert versions["v2"]["standby"] and not versions["v1"]["standby"]


def test_sticky_cookie_keeps_a_client_on_its_version_until_a_rollback(stack, tmp_path):
    """With --sticky-cookie, the first answer sets the cookie to the version picked; with
    it, 20 requests stay on that version though the weights are equal; after that version
    goes to standby (promote the other), the next answer moves the client and says so."""
    front, port, endpoint, path = routed_front(stack, tmp_path, "--sticky-cookie", "wv")
    pools = {"a": stack.handler("apps.echo:echo", endpoint, "--pool-version", "a"),
             "b": stack.handler("apps.echo:echo", endpoint, "--pool-version", "b")}
    wait_workers(front, 2)
    _, first = pid_of(port)
    cookie = first.header("Set-Cookie")
    assert cookie is not None and cookie.endswith("; Path=/; HttpOnly; SameSite=Lax")
    name, _, version = cookie.split(";")[0].partition("=")
    assert name == "wv" and version in pools
    for _ in range(20):
        pid, answer = pid_of(port, extra=f"Cookie: wv={version}\r\n")
        assert pid in logged_pids(pools[version]) and answer.header("Set-Cookie") is None
    other = "b" if version == "a" else "a"
    call(path, "promote", ["default", other])
    pid, answer = pid_of(port, extra=f"Cookie: wv={version}\r\n")
    assert pid in logged_pids(pools[other])
    assert answer.header("Set-Cookie").startswith(f"wv={other};")


def test_deploy_verify_promote_roll_back_under_load_loses_nothing(stack):
    """The README's sequence, repeated under load (``scenarios.canary_promote_rollback``):
    a standby version is verified by header, weighted, promoted, rolled back, promoted
    again, and the old version stopped: every request answered 200 with its own body."""
    result = scenarios.canary_promote_rollback(stack, 3.0)
    assert result.ok, (result.counts, result.failures[:5])
    assert result.operations >= 1


def test_stopping_a_standby_version_and_changing_weights_under_load(stack, tmp_path):
    """Under load: weights change back and forth, a standby version that serves requests
    asking for it is stopped with TERM, and a drained version's queue moves on: 0 failed."""
    front, port, endpoint, path = routed_front(stack, tmp_path, "--version-header",
                                               "X-Version")
    stack.handler("apps.echo:echo", endpoint, "--pool-version", "v1", "--workers", "2")
    v2 = stack.handler("apps.echo:echo", endpoint, "--pool-version", "v2", "--weight", "50")
    wait_workers(front, 3)
    with Load(port, clients=6, seconds=60) as load:
        load.wait_for(200)
        for weight in ("1", "100", "0", "50"):
            call(path, "weight", ["default", "v2", weight])
            load.wait_for(load.counts.answered + 100)
        call(path, "promote", ["default", "v1"])  # v2 in standby
        assert pid_of(port, extra="X-Version: v2\r\n")[0] in logged_pids(v2)
        v2.send_signal(signal.SIGTERM)
        assert v2.wait(30) == 0
        load.wait_for(load.counts.answered + 200)
    counts = load.finish()
    assert counts.failed == 0 and counts.answered == counts.sent, (counts, load.failures[:5])
    poll_until(lambda: all(v["workers"] == 0 for v in call(path, "status")["versions"]
                           if v["version"] == "v2"))
