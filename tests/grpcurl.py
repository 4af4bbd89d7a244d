"""A stand-in for the part of grpcurl the README uses, for its tests.

``grpcurl -plaintext [-d JSON] TARGET list | describe SYMBOL | SERVICE/METHOD`` makes
the calls grpcurl makes: reflection (grpc.reflection.v1, which grpcurl asks first) for
``list`` and ``describe``, and for a method the request built from JSON with
protobuf's JSON mapping (grpcurl's), sent unary or server-streaming as the method is.
Replies print as JSON; a failed call exits 1 with its status, as grpcurl does.
"""

from __future__ import annotations

import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2

import modelwire.v1.inference_service_pb2
import modelwire.v1.model_service_pb2  # noqa: F401  (registers the descriptors)

REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def main(args: list[str]) -> int:
    body, rest, i = "{}", [], 0
    while i < len(args):
        if args[i] == "-plaintext":
            i += 1
        elif args[i] == "-d":
            body, i = args[i + 1], i + 2
        elif args[i].startswith("-"):
            print(f"grpcurl stand-in: unknown flag {args[i]}", file=sys.stderr)
            return 2
        else:
            rest.append(args[i])
            i += 1
    target, verb, *more = rest
    with grpc.insecure_channel(target) as channel:
        try:
            if verb in ("list", "describe"):
                return _reflect(channel, verb, more)
            return _call(channel, verb, body)
        except grpc.RpcError as error:
            print(f"ERROR:\n  Code: {error.code().name}\n  Message: {error.details()}")
            return 1


def _reflect(channel: grpc.Channel, verb: str, more: list[str]) -> int:
    if verb == "list":
        request = reflection_pb2.ServerReflectionRequest(list_services="")
    else:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=more[0])
    call = channel.stream_stream(
        REFLECTION,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    reply = next(iter(call(iter([request]))))
    if reply.HasField("error_response"):
        print(f"Failed: {reply.error_response.error_message}", file=sys.stderr)
        return 1
    if verb == "list":
        for service in reply.list_services_response.service:
            print(service.name)
    else:
        files = reply.file_descriptor_response.file_descriptor_proto
        print(f"{more[0]} is described in {len(files)} files")
    return 0


def _call(channel: grpc.Channel, verb: str, body: str) -> int:
    service_name, method_name = verb.rsplit("/", 1)
    service = descriptor_pool.Default().FindServiceByName(service_name)
    method = service.methods_by_name[method_name]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    path = f"/{service_name}/{method_name}"
    codec = {
        "request_serializer": request_class.SerializeToString,
        "response_deserializer": response_class.FromString,
    }
    request = json_format.Parse(body, request_class())
    if method.server_streaming:
        replies = list(channel.unary_stream(path, **codec)(request, timeout=60))
    else:
        replies = [channel.unary_unary(path, **codec)(request, timeout=60)]
    for reply in replies:
        print(json_format.MessageToJson(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
