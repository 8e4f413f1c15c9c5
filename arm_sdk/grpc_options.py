"""gRPC channel and server options for the link between the orchestrator and its arms.

Both ends must agree on keepalive, or a silently dead peer (host gone, network partition, a
half-open TCP connection) is only noticed when the kernel gives up, which can take minutes.

``CHANNEL_OPTIONS`` (client side, the orchestrator dialling an arm):

- ``grpc.keepalive_time_ms = 10000``: ping the arm every 10 s, even when the stream is idle.
- ``grpc.keepalive_timeout_ms = 5000`` and ``grpc.http2.ping_timeout_ms = 5000``: no ping ack
  within 5 s closes the connection, so a dead arm is detected within about 15 s and the
  orchestrator reconnects or reroutes. NOTE: gRPC core (1.85) never fires the keepalive timeout
  itself (grpc/grpc#39239): an unanswered ping is ended by the ping timeout, 60 s by default, so
  both are set.
- ``grpc.keepalive_permit_without_calls = 1``: keep pinging with no RPC in flight.
- ``grpc.http2.max_pings_without_data = 0``: no cap on pings between data frames (the Execute
  stream can be idle for long stretches).
- ``grpc.max_receive_message_length`` / ``grpc.max_send_message_length = 16 MiB``: subtask inputs
  and outputs may carry documents; the default 4 MiB receive limit is too tight.
- ``grpc.initial_reconnect_backoff_ms = 200``, ``grpc.max_reconnect_backoff_ms = 5000``: a
  restarted arm is redialled quickly, a dead one at most every 5 s.

``SERVER_OPTIONS`` (every arm server):

- ``grpc.keepalive_time_ms = 20000``, ``grpc.keepalive_timeout_ms = 5000`` and
  ``grpc.http2.ping_timeout_ms = 5000``: the arm also pings, so it notices a vanished
  orchestrator and cancels that stream's handlers.
- ``grpc.http2.min_recv_ping_interval_without_data_ms = 5000``: accept a client ping every 5 s
  or slower, which permits the client's 10 s rate (otherwise the server answers with GOAWAY
  ``too_many_pings``).
- ``grpc.http2.max_ping_strikes = 0``: never close a connection for pinging too often.
- ``grpc.keepalive_permit_without_calls = 1`` and the same 16 MiB message sizes.
- ``grpc.so_reuseport = 0``: a second server on a port already served fails to start
  ("cannot listen on ...") instead of silently sharing the port (grpc sets SO_REUSEPORT by
  default, and the kernel would split connections between the two processes). The
  orchestrator's server uses the same options.
"""

from __future__ import annotations

from typing import Final

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024

CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)

SERVER_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
)

__all__ = ["CHANNEL_OPTIONS", "MAX_MESSAGE_BYTES", "SERVER_OPTIONS"]
