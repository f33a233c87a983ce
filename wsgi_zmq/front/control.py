"""The front's control socket (``control_socket``): ``status``, ``drain``, ``resume``.

Usage (in the front, with ``control_socket`` set)::

    control = FrontControl(server, listener, master=None)   # master: all-in-one's link
    control.start()                                          # a greenlet per connection
    control.stop()

``wsgi_zmq.control`` defines the exchange (one JSON line each way). All-in-one, ``master`` is
the front's end of a socketpair to the supervisor: ``workers N`` and ``reload`` go there, and
``status`` adds the supervisor's own. Commands run on the front's loop; none waits for a
worker.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore
from gevent.server import StreamServer

from wsgi_zmq import __version__
from wsgi_zmq.control import MAX_REPLY, MAX_REQUEST, TIMEOUT, Commands, ControlError, request

log = logging.getLogger("wsgi_zmq.error.front")


class FrontControl:
    """Serves the control socket ``listener`` (a bound, listening Unix socket)."""

    def __init__(self, server: Any, listener: Any, master: Any = None) -> None:
        self.server = server
        self.started = time.time()
        self.master = gsocket.socket(fileno=master.detach()) if master is not None else None
        self.master_lock = Semaphore()
        table = {
            "status": (self.status, "", "the front, its queues, pools and workers"),
            "drain": (self.drain, "POOL|PID[@HOST]",
                      "send a pool or a worker nothing new; it finishes what it holds"),
            "resume": (self.resume, "[POOL|PID[@HOST]]",
                       "undo drain (for everything drained, without an argument)"),
            "weight": (self.weight, "POOL VERSION N",
                       "give a pool version weight N (its share against the others')"),
            "promote": (self.promote, "POOL VERSION",
                        "give a version the pool's traffic, put the others in standby"),
        }
        if self.master is not None:
            table["workers"] = (self.forward("workers"), "N",
                                "run N handler workers (as TTIN/TTOU would)")
            table["reload"] = (self.forward("reload"), "",
                               "reload the handler workers (as HUP would)")
        self.commands = Commands(table)
        self.stream = StreamServer(gsocket.socket(fileno=listener.detach()), self.handle)

    def start(self) -> None:
        self.stream.start()

    def stop(self) -> None:
        self.stream.stop(timeout=1)
        if self.master is not None:
            self.master.close()

    def handle(self, sock: Any, address: Any) -> None:
        """One connection: read a request line (within ``TIMEOUT``), write the reply."""
        try:
            with gevent.Timeout(TIMEOUT, False):
                data = b""
                while b"\n" not in data and len(data) <= MAX_REQUEST:
                    piece = sock.recv(65536)
                    if not piece:
                        return
                    data += piece
                if b"\n" not in data:
                    return
                sock.sendall(self.commands.run(data.partition(b"\n")[0]))
        except OSError:
            pass
        finally:
            sock.close()

    # -- commands -------------------------------------------------------------------------

    def status(self, args: list[str]) -> dict[str, Any]:
        server = self.server
        dispatcher = server.dispatcher
        now = dispatcher.clock()
        result: dict[str, Any] = {
            "kind": "front",
            "pid": os.getpid(),
            "wsgi_zmq": __version__,
            "uptime": round(time.time() - self.started, 3),
            "binds": [listener.url for listener in server.listeners],
            "backend": list(dispatcher.endpoints),
            "jobs": list(server.jobs.endpoints) if server.jobs is not None else [],
            "metrics": server.exporter.url + "/metrics" if server.exporter is not None
            else None,
            "draining": server.draining,
            "connections": len(server.connections),
            "in_flight": sum(conn.current is not None for conn in server.connections),
            "lanes": [{"service": lane.service if lane.job else "", "pool": lane.pool,
                       "version": lane.version, "waiting": len(lane.queue),
                       "workers": lane.members}
                      for _, lane in sorted(dispatcher.lanes.items())],
            "drained_pools": sorted(dispatcher.drained_pools),
            "versions": versions(dispatcher),
            "pools": pools(dispatcher, now),
            "requests": requests(server.metrics),
        }
        if self.master is not None:
            try:
                result["master"] = self.ask_master("status", [])
            except ControlError as exc:
                result["master"] = {"error": str(exc)}
        return result

    def drain(self, args: list[str]) -> dict[str, Any]:
        if len(args) != 1:
            raise ControlError("usage: drain POOL|PID[@HOST]")
        target = args[0]
        dispatcher = self.server.dispatcher
        if not dispatcher.select(target):
            known = sorted({peer.pool for peer in dispatcher.peers.values()})
            raise ControlError(f"no pool or worker {target!r} is connected (pools: "
                               f"{', '.join(known) or 'none'})")
        peers = dispatcher.drain(target)
        return {"drained": [describe(peer) for peer in peers], "target": target}

    def resume(self, args: list[str]) -> dict[str, Any]:
        if len(args) > 1:
            raise ControlError("usage: resume [POOL|PID[@HOST]]")
        target = args[0] if args else None
        dispatcher = self.server.dispatcher
        if target is not None and target not in dispatcher.drained_pools and not any(
                peer.drained for peer in dispatcher.select(target)):
            raise ControlError(f"{target!r} is not drained")
        peers = dispatcher.resume(target)
        return {"resumed": [describe(peer) for peer in peers], "target": target}

    def weight(self, args: list[str]) -> dict[str, Any]:
        if len(args) != 3 or not args[2].isdigit():
            raise ControlError("usage: weight POOL VERSION N (VERSION - for none)")
        pool, name = args[0], _version_arg(args[1])
        version = self.server.dispatcher.set_weight(pool, name, int(args[2]))
        return {"pool": pool, "version": name, "weight": version.weight,
                "standby": version.standby}

    def promote(self, args: list[str]) -> dict[str, Any]:
        if len(args) != 2:
            raise ControlError("usage: promote POOL VERSION (VERSION - for none)")
        pool, name = args[0], _version_arg(args[1])
        dispatcher = self.server.dispatcher
        dispatcher.promote(pool, name)
        return {"pool": pool, "promoted": name,
                "standby": sorted(v.name for v in dispatcher.versions[pool].values()
                                  if v.standby)}

    def forward(self, command: str) -> Any:
        """A handler that asks the supervisor (all-in-one) to run ``command``."""
        def run(args: list[str]) -> Any:
            return self.ask_master(command, args)
        return run

    def ask_master(self, command: str, args: list[str]) -> Any:
        sock = self.master
        if sock is None:
            raise ControlError("no supervisor to ask")
        with self.master_lock:
            try:
                with gevent.Timeout(TIMEOUT):
                    sock.sendall(request(command, args))
                    data = b""
                    while not data.endswith(b"\n"):
                        piece = sock.recv(65536)
                        if not piece or len(data) > MAX_REPLY:
                            raise ControlError("the supervisor closed the control link")
                        data += piece
            except gevent.Timeout:
                raise ControlError("the supervisor did not answer in time") from None
            except OSError as exc:
                raise ControlError(f"the supervisor's control link: {exc}") from None
        reply = json.loads(data)
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "failed")))
        return reply.get("result")


def _version_arg(text: str) -> str:
    """A VERSION argument: ``-`` names the version of workers that set none."""
    return "" if text == "-" else text


def versions(dispatcher: Any) -> list[dict[str, Any]]:
    """Every known version of every HTTP pool: weight, standby, workers taking work."""
    out = []
    for pool, known in sorted(dispatcher.versions.items()):
        for name, version in sorted(known.items()):
            lane = dispatcher.lanes.get(version.key)
            out.append({"pool": pool, "version": name, "weight": version.weight,
                        "standby": version.standby,
                        "workers": lane.members if lane is not None else 0,
                        "serving": lane.serving if lane is not None else 0,
                        "waiting": len(lane.queue) if lane is not None else 0})
    return out


def describe(peer: Any) -> str:
    return f"{peer.pid}@{peer.host}"


def worker_state(peer: Any) -> str:
    if peer.leaving:
        return "leaving"
    if peer.ejected:
        return "ejected"
    if peer.drained:
        return "drained"
    return "serving"


def pools(dispatcher: Any, now: float) -> list[dict[str, Any]]:
    """The connected workers, grouped by pool (name, version, host, master, service)."""
    grouped: dict[tuple[str, str, str, int, str], list[Any]] = {}
    for peer in dispatcher.peers.values():
        key = (peer.pool, peer.version, peer.host, peer.master,
               peer.lane.service if peer.lane.job else "")
        grouped.setdefault(key, []).append(peer)
    out = []
    for (name, version, host, master, service), peers in sorted(grouped.items()):
        workers = []
        for peer in sorted(peers, key=lambda p: p.pid):
            age = max(now - peer.since, 1e-9)
            busy = peer.busy + (now - peer.changed) * len(peer.slots)
            workers.append({
                "pid": peer.pid, "host": peer.host, "state": worker_state(peer),
                "capacity": peer.capacity, "in_flight": len(peer.slots),
                "served": peer.served, "busy_seconds": round(busy, 6),
                "busy_share": round(min(1.0, busy / (age * peer.capacity)), 4),
                "connected_for": round(age, 3), "last_heard": round(now - peer.heard, 3),
                "concurrent": peer.concurrent, "foreign": peer.link is not None,
                "body_ring": peer.ring.groups if peer.ring is not None else 0,
                "pipe": peer.pipe is not None,
            })
        out.append({"name": name, "version": version, "host": host, "master": master,
                    "service": service, "drained": name in dispatcher.drained_pools,
                    "capacity": sum(p.capacity for p in peers),
                    "in_flight": sum(len(p.slots) for p in peers), "workers": workers})
    return out


def requests(metrics: Any) -> dict[str, Any] | None:
    """The request counts and the duration histogram (cumulative, for rates and quantiles)."""
    if metrics is None:
        return None
    by_status: dict[str, int] = {}
    for (_, status_class), n in metrics.requests.items():
        key = f"{status_class}xx" if status_class else "other"
        by_status[key] = by_status.get(key, 0) + n
    duration = metrics.duration
    return {"total": duration.count, "by_status": by_status,
            "duration_bounds": list(duration.bounds), "duration_counts": list(duration.counts),
            "duration_sum": round(duration.total, 6),
            "front_answers": {k: v for k, v in metrics.front_answers.items() if v}}
