"""Port checks and free-port settings."""

from __future__ import annotations

import socket

import pytest

from shared.launcher.ports import PortClaim, PortInUseError, check_ports_free, free_port_settings, port_in_use


def test_a_listening_port_is_in_use_and_a_closed_one_is_not() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        with pytest.raises(PortInUseError) as info:
            check_ports_free([PortClaim("gateway HTTP", "127.0.0.1", port, "set LGC_GATEWAY_HTTP_PORT")])
        assert f"127.0.0.1:{port} (gateway HTTP) is already in use: set LGC_GATEWAY_HTTP_PORT" in str(info.value)
    assert not port_in_use("127.0.0.1", port)


def test_free_port_settings_are_distinct_and_leave_room_for_workers() -> None:
    s = free_port_settings(workers=2, spare_workers=3)
    singles = [
        s.gateway_http_port,
        s.gateway_grpc_port,
        s.batcher_metrics_port,
        s.guardian_http_port,
        s.scaler_metrics_port,
        s.embedded_kafka_port,
        s.embedded_redis_port,
    ]
    workers = [s.worker_grpc_port + i for i in range(5)] + [s.worker_metrics_port + i for i in range(5)]
    everything = singles + workers
    assert len(set(everything)) == len(everything)
    assert not any(port_in_use("127.0.0.1", p) for p in everything)
    assert s.workers == 2
