"""The mirror's watch on a member that other calls find failing while the
watch is still connecting: it must stop at once, so that the run loop
follows from another member.

grpc.aio's `write()` waits until the call's initial metadata is sent, and a
call cancelled before that leaves that wait pending for good (grpc 1.85). A
watch cancelled so (the mirror cancels the watch of a member that failed
other calls) left an agent deaf to every later revision, its own writes
included, after etcd came back: stop 22's CI failure in
tests/cluster/test_cluster.py. Real gRPC channels to a real socket that
listens and never speaks (an etcd member between its restart and its
readiness does the same); no etcd is needed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from waypost.storage import _etcd_session
from waypost.storage._etcd_common import Context, StreamEnded
from waypost.storage._etcd_config import EtcdConfig
from waypost.storage._etcd_mirror import Mirror


@pytest.fixture
def mute_member() -> Iterator[str]:
    """An address whose socket listens (the kernel completes the handshake) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_watch_cancelled_while_connecting_stops_at_once(
    mute_member: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gRPC's default 20 s connection attempt (ours gives up after 100 ms), so
    # that the cancel surely comes while the watch's first write waits on it
    monkeypatch.setattr(_etcd_session, "_CHANNEL_OPTIONS", ())
    ctx = Context(EtcdConfig(endpoints=(mute_member,), prefix="/streams/"))
    endpoint = ctx.session.current()
    follow = asyncio.ensure_future(Mirror(ctx)._follow(endpoint))
    await asyncio.sleep(0.1)
    ctx.session.failed(endpoint)  # what a failed keep-alive or write on that member does
    with pytest.raises(StreamEnded, match=r"ended \(CANCELLED\) before the request was sent"):
        await asyncio.wait_for(follow, 2)
    await ctx.session.close()
