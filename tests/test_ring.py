"""Body rings (``wsgi_zmq/ring.py``): what the front checks before it takes a worker's ring,
and the ring's slots.

Every ring here is a real memfd of this process, offered as ``/proc/<our pid>/fd/N``, the
way a worker on the front's host offers its own; the refusals are offers a hostile or
broken peer could make."""

from __future__ import annotations

import fcntl
import mmap
import os
import socket
from collections.abc import Iterator

import pytest

from wsgi_zmq import protocol
from wsgi_zmq.errors import ProtocolError
from wsgi_zmq.protocol import RING_HEADER, RING_MAGIC, RingOffer
from wsgi_zmq.ring import (
    COPIES_SIZE,
    EARLY_BYTES,
    EARLY_PIECE,
    MAX_GROUPS,
    RING_SLOT,
    SPARE_COPIES,
    SUPPORTED,
    PieceCopies,
    RingRefused,
    WorkerRing,
    open_ring,
    ring_slot_size,
)

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="no memfd seals on this system")

SLOT = 4096
WINDOW = 4


@pytest.fixture
def worker_ring() -> Iterator[WorkerRing]:
    ring = WorkerRing(3, WINDOW, SLOT)
    yield ring
    ring.close()


def offer_of(ring: WorkerRing) -> RingOffer:
    [record] = protocol.split_frame(protocol.frame([ring.offer(os.getpid())]))
    assert record.kind == protocol.RING and record.rid == 0
    return protocol.decode_ring(record.payload)


def body_at(slot: int, length: int) -> bytes:
    return protocol.BODY_AT_HEAD.pack(slot, length)


def test_an_offered_ring_opens_and_carries_pieces(worker_ring: WorkerRing) -> None:
    """The front writes a piece into a slot; the worker reads the same bytes back from the
    slot a BODY_AT names."""
    ring = open_ring(offer_of(worker_ring), WINDOW, set())
    try:
        assert (ring.groups, ring.window, ring.slot_size) == (3, WINDOW, SLOT)
        slot = ring.put(7, 0, b"hello")
        assert slot >= 0
        assert worker_ring.read(body_at(slot, 5)) == b"hello"
        ring.check({7})
    finally:
        ring.close()


def test_a_piece_read_from_a_socket_lands_in_its_slot(worker_ring: WorkerRing) -> None:
    """``view`` is where the front's ``recv_into`` reads a piece of a body."""
    ring = open_ring(offer_of(worker_ring), WINDOW, set())
    left, right = socket.socketpair()
    try:
        data = os.urandom(SLOT)
        left.sendall(data)
        slot = ring.slot(9, 2)
        view = ring.view(slot)
        try:
            got = 0
            while got < SLOT:
                got += right.recv_into(view[got:], SLOT - got)
        finally:
            view.release()
        assert worker_ring.read(body_at(slot, SLOT)) == data
    finally:
        left.close()
        right.close()
        ring.close()  # every view was released: the map closes


def test_a_request_keeps_one_group_and_pieces_go_round_it(worker_ring: WorkerRing) -> None:
    ring = open_ring(offer_of(worker_ring), WINDOW, set())
    try:
        first = [ring.slot(1, index) for index in range(2 * WINDOW)]
        base = first[0]
        assert first == [base + index % WINDOW for index in range(2 * WINDOW)]
        second = ring.slot(2, 0)
        third = ring.slot(3, 0)
        groups = {base // WINDOW, second // WINDOW, third // WINDOW}
        assert len(groups) == 3, "two requests share a group"
        assert ring.slot(4, 0) == -1, "a fourth request got a group of three"
        assert ring.put(4, 0, b"x") == -1
        ring.check({1, 2, 3})
        ring.release(2)
        ring.release(2)  # a second release of the same request changes nothing
        ring.check({1, 3})
        assert ring.slot(4, 0) == second, "the freed group serves the next request"
        ring.check({1, 3, 4})
    finally:
        ring.close()


def test_a_piece_larger_than_a_slot_is_not_taken(worker_ring: WorkerRing) -> None:
    ring = open_ring(offer_of(worker_ring), WINDOW, set())
    try:
        assert ring.put(1, 0, b"x" * (SLOT + 1)) == -1
        assert 1 not in ring.held, "a refused piece took a group"
        ring.check(set())
    finally:
        ring.close()


def test_check_finds_a_group_held_by_a_request_its_worker_does_not_hold(
        worker_ring: WorkerRing) -> None:
    ring = open_ring(offer_of(worker_ring), WINDOW, set())
    try:
        ring.slot(5, 0)
        with pytest.raises(AssertionError, match="holds a ring group"):
            ring.check(set())
        ring.free.append(ring.held[5])  # a group both free and held
        with pytest.raises(AssertionError, match="lost or twice"):
            ring.check({5})
    finally:
        ring.close()


def test_the_worker_reads_no_slot_outside_its_ring(worker_ring: WorkerRing) -> None:
    assert worker_ring.read(body_at(worker_ring.slots, 1)) is None
    assert worker_ring.read(body_at(0, SLOT + 1)) is None
    assert worker_ring.read(b"\0" * 7) is None
    assert worker_ring.read(body_at(worker_ring.slots - 1, SLOT)) == b"\0" * SLOT


def test_the_ring_cannot_shrink_under_the_front(worker_ring: WorkerRing) -> None:
    """A peer that shrank the file under the front's mapping would kill the front with
    SIGBUS at its next write: the seal forbids it, and a later seal is refused too."""
    with pytest.raises(PermissionError):
        os.ftruncate(worker_ring.fd, RING_HEADER)
    with pytest.raises(PermissionError):
        fcntl.fcntl(worker_ring.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)


def test_slot_sizes_a_worker_offers() -> None:
    assert ring_slot_size(65536) == RING_SLOT
    assert ring_slot_size(RING_SLOT + 1) == RING_SLOT + protocol.RING_PAGE
    assert ring_slot_size(64 << 20) == protocol.MAX_RING_SLOT


def test_a_window_too_large_for_any_ring_is_refused_by_the_worker() -> None:
    with pytest.raises(ValueError, match="more than a ring may hold"):
        WorkerRing(1, protocol.MAX_WINDOW, protocol.MAX_RING_SLOT)


def test_a_ring_past_the_limit_holds_fewer_requests() -> None:
    ring = WorkerRing(MAX_GROUPS, 8, RING_SLOT)
    try:
        assert ring.slots % 8 == 0
        assert RING_HEADER + ring.slots * RING_SLOT <= protocol.MAX_RING_BYTES
    finally:
        ring.close()


# -- offers the front refuses -------------------------------------------------------------------

def _memfd(size: int, header: bytes, seals: int) -> int:
    fd = os.memfd_create("test-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    os.pwrite(fd, header, 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def _offer(fd: int, slots: int = 8, nonce: bytes = b"n" * 16, pid: int = 0) -> RingOffer:
    return RingOffer(pid or os.getpid(), fd, slots, SLOT, nonce)


def _refused(offer: RingOffer, match: str, taken: set[tuple[int, int]] | None = None) -> None:
    with pytest.raises(RingRefused, match=match):
        open_ring(offer, WINDOW, taken or set())


def test_a_descriptor_that_does_not_exist_is_refused() -> None:
    _refused(_offer(1_000_000), r"/proc/\d+/fd/1000000: No such file")
    _refused(_offer(3, pid=2 ** 31), r"No such file")


def test_a_file_that_is_no_memfd_is_refused(tmp_path) -> None:
    """A file on disk (the front would write bodies to disk), a socket, a pipe."""
    path = tmp_path / "ring"
    path.write_bytes(RING_MAGIC + b"n" * 16 + bytes(RING_HEADER - 48 + 8 * SLOT))
    fd = os.open(path, os.O_RDWR)
    left, right = socket.socketpair()
    read_end, write_end = os.pipe()
    try:
        _refused(_offer(fd), "is no memfd")
        _refused(_offer(left.fileno()), "is no memfd")
        _refused(_offer(read_end), "is no memfd")
    finally:
        os.close(fd)
        left.close()
        right.close()
        os.close(read_end)
        os.close(write_end)


def test_a_memfd_that_may_shrink_is_refused() -> None:
    fd = _memfd(RING_HEADER + 8 * SLOT, RING_MAGIC + b"n" * 16, 0)
    try:
        _refused(_offer(fd), "not sealed against shrinking")
    finally:
        os.close(fd)


def test_a_memfd_of_another_size_is_refused() -> None:
    fd = _memfd(RING_HEADER + 8 * SLOT, RING_MAGIC + b"n" * 16, fcntl.F_SEAL_SHRINK)
    try:
        _refused(_offer(fd, slots=16), r"has \d+ bytes, not the \d+ offered")
    finally:
        os.close(fd)


def test_a_memfd_without_the_offered_nonce_is_refused() -> None:
    """A peer that names some other process's memfd does not know what its header holds."""
    fd = _memfd(RING_HEADER + 8 * SLOT, RING_MAGIC + b"n" * 16, fcntl.F_SEAL_SHRINK)
    other = _memfd(RING_HEADER + 8 * SLOT, b"no ring at all", fcntl.F_SEAL_SHRINK)
    try:
        _refused(_offer(fd, nonce=b"m" * 16), "does not hold the ring offered")
        _refused(_offer(other), "does not hold the ring offered")
        ring = open_ring(_offer(fd), WINDOW, set())  # the right nonce: taken
        ring.close()
    finally:
        os.close(fd)
        os.close(other)


def test_a_ring_another_worker_has_is_refused(worker_ring: WorkerRing) -> None:
    """A peer that replays another worker's offer (seen on the network) gets nothing."""
    offer = offer_of(worker_ring)
    ring = open_ring(offer, WINDOW, set())
    try:
        _refused(offer, "another worker's ring", {ring.key})
    finally:
        ring.close()


def test_a_ring_with_fewer_slots_than_a_window_is_refused() -> None:
    fd = _memfd(RING_HEADER + 2 * SLOT, RING_MAGIC + b"n" * 16, fcntl.F_SEAL_SHRINK)
    try:
        _refused(_offer(fd, slots=2), "fewer than its window")
    finally:
        os.close(fd)


def test_a_ring_sealed_against_writing_cannot_be_mapped() -> None:
    fd = _memfd(RING_HEADER + 8 * SLOT, RING_MAGIC + b"n" * 16,
                fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_WRITE)
    try:
        _refused(_offer(fd), "cannot be mapped")
    finally:
        os.close(fd)


def test_no_ring_has_more_groups_than_the_limit() -> None:
    slots = (MAX_GROUPS + 5) * WINDOW
    fd = _memfd(RING_HEADER + slots * SLOT, RING_MAGIC + b"n" * 16, fcntl.F_SEAL_SHRINK)
    try:
        ring = open_ring(_offer(fd, slots=slots), WINDOW, set())
        assert ring.groups == MAX_GROUPS
        ring.close()
    finally:
        os.close(fd)


# -- the RING record --------------------------------------------------------------------------

@pytest.mark.parametrize(("slots", "slot_size", "match"), [
    (8, 4095, "multiple of"),
    (8, 0, "multiple of"),
    (8, protocol.MAX_RING_SLOT + protocol.RING_PAGE, "multiple of"),
    (8, 6000, "multiple of"),
    (0, 4096, "RING of 0 slots"),
    (protocol.MAX_RING_BYTES // 4096, 4096, "slots"),
])
def test_a_ring_of_no_allowed_shape_is_malformed(slots: int, slot_size: int, match: str) -> None:
    payload = protocol.RING_HEAD.pack(1, 3, slots, slot_size, bytes(16))
    with pytest.raises(ProtocolError, match=match):
        protocol.decode_ring(payload)


def test_a_ring_record_of_another_length_is_malformed() -> None:
    payload = protocol.RING_HEAD.pack(1, 3, 8, 4096, bytes(16))
    with pytest.raises(ProtocolError, match="RING of 33 bytes"):
        protocol.decode_ring(payload + b"x")
    with pytest.raises(ProtocolError, match="too short"):
        protocol.split_frame(protocol.VERSION_BYTE + protocol.RECORD_HEAD.pack(
            protocol.RING, 0, 4) + b"abcd")


def test_the_largest_ring_allowed_decodes() -> None:
    slots = (protocol.MAX_RING_BYTES - RING_HEADER) // RING_SLOT
    offer = protocol.decode_ring(protocol.RING_HEAD.pack(1, 3, slots, RING_SLOT, bytes(16)))
    assert offer.size <= protocol.MAX_RING_BYTES


def test_mmap_of_the_worker_side_is_read_only(worker_ring: WorkerRing) -> None:
    """The worker only reads its slots: its map cannot write one by mistake."""
    with pytest.raises(TypeError):
        worker_ring.mm[RING_HEADER:RING_HEADER + 1] = b"x"
    assert isinstance(worker_ring.mm, mmap.mmap)



def test_piece_copies_serve_again_and_keep_at_most_their_spares() -> None:
    """The front's buffers for early pieces: private (a write stays in this process), big
    enough for ``EARLY_BYTES`` and one more piece; a buffer given back serves the next
    request; past ``SPARE_COPIES`` idle ones, a buffer given back is unmapped."""
    copies = PieceCopies()
    taken = [copies.take() for _ in range(SPARE_COPIES + 1)]
    assert len(set(map(id, taken))) == len(taken)
    assert all(len(buf) == COPIES_SIZE == EARLY_BYTES + EARLY_PIECE for buf in taken)
    taken[0][:5] = b"piece"
    child = os.fork()
    if child == 0:  # a private mapping: the child's write is its own
        taken[0][:5] = b"child"
        os._exit(0)
    os.waitpid(child, 0)
    assert taken[0][:5] == b"piece"
    for buf in taken:
        copies.give(buf)
        copies.check()
    assert len(copies.idle) == SPARE_COPIES and taken[-1].closed
    assert copies.take() is taken[SPARE_COPIES - 1]  # the last one kept, first again
    copies.check()
