"""A small ADS client over grpcio: what an Envoy says on the stream, under a test's control."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format, struct_pb2
from google.rpc import status_pb2

from waypost.mesh import _protos
from waypost.mesh import resources as r

_protos.register()  # the message types, to read the resources

_STOP = object()


class AdsClient:
    def __init__(
        self,
        address: str,
        node_id: str,
        metadata: dict[str, str] | None = None,
        token: str = "",
        ca: bytes | None = None,
    ) -> None:
        """`token`: sent as `x-consul-token`, as Envoy's bootstrap does; `ca`: over TLS."""
        if ca is None:
            self.channel = grpc.insecure_channel(address)
        else:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(ca))
        self.node = base_pb2.Node(
            id=node_id, metadata=json_format.ParseDict(metadata or {}, struct_pb2.Struct())
        )
        self._out: queue.Queue[object] = queue.Queue()
        self.responses: queue.Queue[discovery_pb2.DiscoveryResponse] = queue.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        call_metadata = [("x-consul-token", token)] if token else None
        self._call = stub.StreamAggregatedResources(self._requests(), metadata=call_metadata)
        self.error: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (item := self._out.get()) is not _STOP:
            assert isinstance(item, discovery_pb2.DiscoveryRequest)
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc

    def send(
        self,
        type_url: str,
        names: list[str] | None = None,
        version: str = "",
        nonce: str = "",
        error: str = "",
    ) -> None:
        req = discovery_pb2.DiscoveryRequest(
            node=self.node,
            type_url=type_url,
            resource_names=names or [],
            version_info=version,
            response_nonce=nonce,
        )
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._out.put(req)

    def ack(
        self, response: discovery_pb2.DiscoveryResponse, names: list[str] | None = None
    ) -> None:
        self.send(response.type_url, names, response.version_info, response.nonce)

    def next(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        return self.responses.get(timeout=timeout)

    def quiet(self, seconds: float) -> bool:
        """True if nothing arrives for `seconds`."""
        try:
            self.responses.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def refusal(self, timeout: float = 5.0) -> grpc.RpcError:
        """The error that ended the stream (waits for it)."""
        self._reader.join(timeout)
        assert self.error is not None, "the stream was not refused"
        return self.error

    def close(self) -> None:
        self._out.put(_STOP)
        self.channel.close()


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The resource names in a response (clusters, listeners, secrets: `name`; CLAs: `cluster_name`)."""
    out = []
    for item in response.resources:
        data = json_format.MessageToDict(item)
        out.append(data.get("name") or data.get("clusterName"))
    return out


def endpoints_of(response: discovery_pb2.DiscoveryResponse) -> dict[str, list[int]]:
    """ClusterLoadAssignments by cluster: the ports of their endpoints."""
    out = {}
    for item in response.resources:
        data = json_format.MessageToDict(item)
        ports = [
            e["endpoint"]["address"]["socketAddress"]["portValue"]
            for group in data.get("endpoints", [])
            for e in group["lbEndpoints"]
        ]
        out[data["clusterName"]] = sorted(ports)
    return out


__all__ = ["AdsClient", "endpoints_of", "names_of", "r"]
