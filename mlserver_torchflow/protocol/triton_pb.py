"""Triton's gRPC messages for the RPCs MLServer lacks, built in a descriptor pool of their own.

tritonclient and perf_analyzer call `ModelConfig` and `ModelStatistics` on
`inference.GRPCInferenceService`; the server answers them with a grpc generic handler, which needs
Triton's message classes (MLServer serves the repository RPCs itself, so their messages are not
here). Triton's `.proto` files declare the package `inference`, as MLServer's `dataplane.proto`
does, so loading them into protobuf's default pool clashes with MLServer's own `inference.*`
messages. Here the subset is declared as Python tables, turned into a `FileDescriptorProto` and
added to a private `DescriptorPool`: the default pool never sees it.

Every declared field has exactly Triton's name, number, type, label and full type name
(`tests/unit/protocol/test_triton_pb.py` checks them against tritonclient's descriptors), so the
bytes are Triton's. Fields Triton has and the tables omit (e.g. `ModelConfig.optimization`) are
simply absent: a client reads them as defaults. tritonclient is a test dependency only; nothing
here imports it.
"""

from __future__ import annotations

import functools
import re
from typing import Any, TypeAlias

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

SERVICE = "inference.GRPCInferenceService"
METHODS: dict[str, tuple[str, str]] = {
    rpc: (f"{rpc}Request", f"{rpc}Response") for rpc in ("ModelConfig", "ModelStatistics")
}

_PACKAGE = "inference"
_FILE = "torchflow/triton_subset.proto"

# Enums, all numbered 0, 1, 2... in Triton, so the position is the number.
_ENUMS: dict[str, tuple[str, ...]] = {
    "DataType": (
        *("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64"),
        *("TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64"),
        *("TYPE_STRING", "TYPE_BF16"),
    ),
    "ModelInput.Format": ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"),
    "ModelQueuePolicy.TimeoutAction": ("REJECT", "DELAY"),
    "ModelInstanceGroup.Kind": ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"),
}

# Messages in Triton's declaration order (a parent before its nested messages), fields in a
# proto-like shorthand: `[repeated ]TYPE name=N[ @oneof]`, or `map<K,V> name=N`.
_MESSAGES: dict[str, str] = {
    "ModelConfigRequest": "string name=1; string version=2",
    "ModelConfigResponse": "ModelConfig config=1",
    "ModelConfig": "string name=1; string platform=2; string backend=17; int32 max_batch_size=4;"
    " repeated ModelInput input=5; repeated ModelOutput output=6;"
    " ModelDynamicBatching dynamic_batching=11 @scheduling_choice; repeated ModelInstanceGroup instance_group=7",
    "ModelInput": "string name=1; DataType data_type=2; ModelInput.Format format=3; repeated int64 dims=4;"
    " bool is_shape_tensor=6; bool allow_ragged_batch=7; bool optional=8",
    "ModelOutput": "string name=1; DataType data_type=2; repeated int64 dims=3; string label_filename=4;"
    " bool is_shape_tensor=6",
    "ModelDynamicBatching": "repeated int32 preferred_batch_size=1; uint64 max_queue_delay_microseconds=2;"
    " bool preserve_ordering=3; uint64 priority_levels=4; uint64 default_priority_level=5;"
    " ModelQueuePolicy default_queue_policy=6; map<uint64,ModelQueuePolicy> priority_queue_policy=7",
    "ModelQueuePolicy": "ModelQueuePolicy.TimeoutAction timeout_action=1; uint64 default_timeout_microseconds=2;"
    " bool allow_timeout_override=3; uint32 max_queue_size=4",
    "ModelInstanceGroup": "string name=1; ModelInstanceGroup.Kind kind=4; int32 count=2; repeated int32 gpus=3",
    "ModelStatisticsRequest": "string name=1; string version=2",
    "ModelStatisticsResponse": "repeated ModelStatistics model_stats=1",
    "ModelStatistics": "string name=1; string version=2; uint64 last_inference=3; uint64 inference_count=4;"
    " uint64 execution_count=5; InferStatistics inference_stats=6; repeated InferBatchStatistics batch_stats=7",
    "InferStatistics": "StatisticDuration success=1; StatisticDuration fail=2; StatisticDuration queue=3;"
    " StatisticDuration compute_input=4; StatisticDuration compute_infer=5; StatisticDuration compute_output=6;"
    " StatisticDuration cache_hit=7; StatisticDuration cache_miss=8",
    "StatisticDuration": "uint64 count=1; uint64 ns=2",
    "InferBatchStatistics": "uint64 batch_size=1; StatisticDuration compute_input=2;"
    " StatisticDuration compute_infer=3; StatisticDuration compute_output=4",
}

_F: TypeAlias = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
}
_FIELD = re.compile(r"(repeated )?(?:map<(\w+),([\w.]+)>|([\w.]+)) (\w+)=(\d+)(?: @(\w+))?")


def _field(message: descriptor_pb2.DescriptorProto, label: int, kind: str, name: str, number: int) -> _F:
    field = message.field.add(name=name, number=number, label=label)
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
        field.type_name = f".{_PACKAGE}.{kind}"
    return field


def _camel(name: str) -> str:
    """protoc's name for a map's entry type: `priority_queue_policy` -> `PriorityQueuePolicy`(`Entry`)."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _file() -> descriptor_pb2.FileDescriptorProto:
    """The tables as one proto3 file: proto3 for Triton's field presence and packed repeated scalars."""
    proto = descriptor_pb2.FileDescriptorProto(name=_FILE, package=_PACKAGE, syntax="proto3")
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full, spec in _MESSAGES.items():
        parent, _, short = full.rpartition(".")
        message = (messages[parent].nested_type if parent else proto.message_type).add(name=short)
        messages[full] = message
        for text in filter(None, (part.strip() for part in spec.split(";"))):
            match = _FIELD.fullmatch(text)
            if match is None:
                raise AssertionError(f"bad field {text!r} in {full}")
            repeated, key, value, kind, name, number, oneof = match.groups()
            if key:  # a map is a repeated message of a nested `<Name>Entry {key = 1; value = 2}`
                entry = message.nested_type.add(name=f"{_camel(name)}Entry")
                entry.options.map_entry = True
                _field(entry, _F.LABEL_OPTIONAL, key, "key", 1)
                _field(entry, _F.LABEL_OPTIONAL, value, "value", 2)
                repeated, kind = "repeated ", f"{full}.{entry.name}"
            field = _field(
                message, _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL, kind, name, int(number)
            )
            if oneof:
                names = [decl.name for decl in message.oneof_decl]
                if oneof not in names:
                    names.append(message.oneof_decl.add(name=oneof).name)
                field.oneof_index = names.index(oneof)
    for full, values in _ENUMS.items():
        parent, _, short = full.rpartition(".")
        enum = (messages[parent].enum_type if parent else proto.enum_type).add(name=short)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
# protobuf >= 4.22; before it, one factory for the pool, so that nested classes are the same classes.
_get_class = (
    getattr(message_factory, "GetMessageClass", None) or message_factory.MessageFactory(_POOL).GetPrototype
)


@functools.cache
def message_class(name: str) -> type[Message]:
    """The class of `inference.<name>` in the private pool, e.g. `message_class("ModelConfigResponse")`.

    Nested names take a dot (`"ModelDynamicBatching.PriorityQueuePolicyEntry"`); an unknown name is a
    KeyError.
    """
    try:
        descriptor = _POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}")
    except KeyError:
        raise KeyError(
            f"no message {_PACKAGE}.{name} in the Triton subset ({', '.join(_MESSAGES)})"
        ) from None
    return _get_class(descriptor)  # type: ignore[no-any-return]


def decode(name: str, data: bytes) -> dict[str, Any]:
    """Wire bytes of `inference.<name>` as Triton's JSON form, keyed by the proto field names.

    Fields at their default are left out, enums come as names, and protobuf's JSON mapping renders
    64-bit integers (`uint64 inference_count`, `int64 dims`...) as strings. Bytes that do not parse
    are a ValueError, so the handler can answer INVALID_ARGUMENT rather than crash.
    """
    message = message_class(name)()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise ValueError(f"{len(data)} bytes are not a valid {_PACKAGE}.{name}: {error}") from None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def encode(name: str, value: dict[str, Any]) -> bytes:
    """`value`, in Triton's JSON form (the REST side's config and stats dicts), as wire bytes of `inference.<name>`.

    64-bit integers may be ints or strings, enums names or numbers. Keys the subset lacks are dropped,
    since the REST side may carry fields the tables omit; so is an unknown enum name (protobuf's
    `ignore_unknown_fields` covers both), which leaves the field at its default. A value of the
    wrong type is a ValueError.
    """
    try:
        message = json_format.ParseDict(value, message_class(name)(), ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise ValueError(f"not a valid {_PACKAGE}.{name}: {error}") from None
    return message.SerializeToString()
