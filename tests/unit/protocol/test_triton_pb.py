"""Triton's messages in a pool of their own: the same fields as tritonclient's, the same bytes, no clash.

tritonclient's `service_pb2` and MLServer's `dataplane_pb2` cannot share a process (both declare
`inference.*` in the default pool, and this test process imports MLServer), so everything Triton
side runs in a subprocess that imports tritonclient and not MLServer.
"""

from __future__ import annotations

import base64
import inspect
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from mlserver_torchflow.protocol import triton_pb
from mlserver_torchflow.protocol.triton_pb import METHODS, SERVICE, decode, encode, message_class

TRITON = """
import base64, json, sys
from typing import Any
import tritonclient.grpc.model_config_pb2, tritonclient.grpc.service_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
assert not any(m.startswith(("mlserver", "mlserver_torchflow")) for m in sys.modules)
POOL = descriptor_pool.Default()
payload = json.load(sys.stdin)
"""


def in_triton(code: str, payload: Any) -> Any:
    """Runs `code` next to tritonclient's classes, `payload` in, what it prints as JSON out."""
    done = subprocess.run(
        [sys.executable, "-c", TRITON + textwrap.dedent(code)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def describe(descriptor: Any) -> dict[str, Any]:
    """A message's own fields (nested types apart), as comparable as their `.proto` lines.

    Self-contained: the subprocess runs its source on tritonclient's descriptors.
    """
    from google.protobuf import descriptor_pb2, json_format

    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    fields = {
        f.name: {
            "number": f.number,
            "type": f.type,
            "label": f.label,
            "type_name": f.type_name,
            "oneof": proto.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
            "options": json_format.MessageToDict(f.options),
        }
        for f in proto.field
    }
    return {"fields": fields, "map_entry": proto.options.map_entry}


def ours() -> tuple[descriptor_pb2.FileDescriptorProto, list[str], list[str]]:
    """Our file, every message's full name (nested ones too) and every enum's."""
    proto = descriptor_pb2.FileDescriptorProto()
    message_class("ModelConfig").DESCRIPTOR.file.CopyToProto(proto)
    messages: list[str] = []
    enums = [f"inference.{e.name}" for e in proto.enum_type]

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        messages.append(f"{prefix}{message.name}")
        enums.extend(f"{prefix}{message.name}.{e.name}" for e in message.enum_type)
        for nested in message.nested_type:
            walk(nested, f"{prefix}{message.name}.")

    for message in proto.message_type:
        walk(message, "inference.")
    return proto, messages, enums


def test_every_field_and_enum_value_is_tritons() -> None:
    proto, messages, enums = ours()
    theirs = in_triton(
        textwrap.dedent(inspect.getsource(describe))
        + """
service = POOL.FindServiceByName(payload["service"])
print(json.dumps({
    "messages": {n: describe(POOL.FindMessageTypeByName(n)) for n in payload["messages"]},
    "enums": {n: [[v.name, v.number] for v in POOL.FindEnumTypeByName(n).values] for n in payload["enums"]},
    "methods": {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods},
    "syntax": [descriptor_pb2.FileDescriptorProto.FromString(POOL.FindFileByName(f).serialized_pb).syntax
        for f in ("model_config.proto", "grpc_service.proto")],
}))
""",
        {"service": SERVICE, "messages": messages, "enums": enums},
    )
    wrong = []
    for name in messages:
        mine = describe(message_class(name.removeprefix("inference.")).DESCRIPTOR)
        triton = theirs["messages"][name]
        if mine["map_entry"] != triton["map_entry"]:
            wrong.append(f"{name}: map_entry {mine['map_entry']} != Triton's {triton['map_entry']}")
        for field, spec in mine["fields"].items():
            if spec != triton["fields"].get(field):
                wrong.append(f"{name}.{field}: {spec} != Triton's {triton['fields'].get(field)}")
    pool = message_class("ModelConfig").DESCRIPTOR.file.pool
    for name in enums:
        mine_values = [[v.name, v.number] for v in pool.FindEnumTypeByName(name).values]
        if mine_values != theirs["enums"][name]:
            wrong.append(f"{name}: {mine_values} != Triton's {theirs['enums'][name]}")
    assert not wrong, "\n".join(wrong)
    assert set(theirs["syntax"]) == {proto.syntax} == {"proto3"}
    for rpc, (request, response) in METHODS.items():
        assert theirs["methods"][rpc] == [f"inference.{request}", f"inference.{response}"]
    assert (
        len(METHODS) == 2 and "inference.DataType" in enums and "inference.ModelInstanceGroup.Kind" in enums
    )
    # the subset's one oneof and one map, compared above like any field: check they were compared
    config = theirs["messages"]["inference.ModelConfig"]["fields"]
    assert config["dynamic_batching"]["oneof"] == "scheduling_choice"
    entry = "inference.ModelDynamicBatching.PriorityQueuePolicyEntry"
    assert entry in messages and theirs["messages"][entry]["map_entry"] is True
    assert set(theirs["messages"][entry]["fields"]) == {"key", "value"}


def test_methods_are_the_ones_mlservers_service_lacks() -> None:
    """MLServer's servicer has the repository RPCs (and their messages); ours are the two it lacks."""
    from mlserver.grpc import dataplane_pb2

    service = dataplane_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == SERVICE
    assert {"RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"} <= set(service.methods_by_name)
    assert not set(METHODS) & set(service.methods_by_name)


def test_the_subset_has_the_fields_the_handlers_send() -> None:
    """The comparison above checks what is declared; this, that what the brief needs is declared."""
    needed = {
        "ModelConfig": "name platform backend max_batch_size input output dynamic_batching instance_group",
        "ModelInput": "name data_type format dims is_shape_tensor allow_ragged_batch optional",
        "ModelOutput": "name data_type dims label_filename is_shape_tensor",
        "ModelDynamicBatching": "preferred_batch_size max_queue_delay_microseconds preserve_ordering"
        " priority_levels default_priority_level default_queue_policy priority_queue_policy",
        "ModelStatistics": "name version last_inference inference_count execution_count inference_stats batch_stats",
        "InferStatistics": "success fail queue compute_input compute_infer compute_output cache_hit cache_miss",
    }
    for name, fields in needed.items():
        assert set(fields.split()) <= set(message_class(name).DESCRIPTOR.fields_by_name), name


CONFIG: dict[str, Any] = {
    "name": "m",
    "platform": "pytorch_libtorch",
    "backend": "mlserver_torchflow",
    "max_batch_size": 64,
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4], "optional": True}],
    "output": [{"name": "y", "data_type": "TYPE_BF16", "dims": [3], "label_filename": "labels.txt"}],
    "dynamic_batching": {
        "preferred_batch_size": [8, 16],
        "max_queue_delay_microseconds": 10000,
        "default_queue_policy": {"timeout_action": "DELAY", "max_queue_size": 5},
        "priority_queue_policy": {2: {"default_timeout_microseconds": 7, "allow_timeout_override": True}},
    },
    "instance_group": [{"name": "g", "kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}],
    "not_in_the_subset": {"ignored": True},
}
CONFIG_AS_DICT: dict[
    str, Any
] = {  # MessageToDict's form: 64-bit ints and map keys as strings, the unknown key gone
    **{k: v for k, v in CONFIG.items() if k not in ("input", "dynamic_batching", "not_in_the_subset")},
    "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "4"], "optional": True}],
    "output": [{"name": "y", "data_type": "TYPE_BF16", "dims": ["3"], "label_filename": "labels.txt"}],
    "dynamic_batching": {
        "preferred_batch_size": [8, 16],
        "max_queue_delay_microseconds": "10000",
        "default_queue_policy": {"timeout_action": "DELAY", "max_queue_size": 5},
        "priority_queue_policy": {"2": {"default_timeout_microseconds": "7", "allow_timeout_override": True}},
    },
}
STATS: dict[str, Any] = {
    "model_stats": [
        {
            "name": "m",
            "version": "1",
            "last_inference": 1700000000000,
            "inference_count": 3,
            "execution_count": 2,
            "inference_stats": {"success": {"count": 3, "ns": 1000}, "queue": {"count": 3, "ns": 20}},
            "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 5}}],
        }
    ]
}
STATS_AS_DICT: dict[str, Any] = {
    "model_stats": [
        {
            "name": "m",
            "version": "1",
            "last_inference": "1700000000000",
            "inference_count": "3",
            "execution_count": "2",
            "inference_stats": {"success": {"count": "3", "ns": "1000"}, "queue": {"count": "3", "ns": "20"}},
            "batch_stats": [{"batch_size": "1", "compute_infer": {"count": "1", "ns": "5"}}],
        }
    ]
}


def test_our_bytes_parse_as_tritons_messages() -> None:
    cases = {
        "ModelConfigResponse": ({"config": CONFIG}, {"config": CONFIG_AS_DICT}),
        "ModelStatisticsResponse": (STATS, STATS_AS_DICT),
    }
    payload = {name: base64.b64encode(encode(name, value)).decode() for name, (value, _) in cases.items()}
    theirs = in_triton(
        """
out = {}
for name, data in payload.items():
    message = getattr(tritonclient.grpc.service_pb2, name)()
    message.ParseFromString(base64.b64decode(data))
    out[name] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if name == "ModelConfigResponse":
        out["scheduling_choice"] = message.config.WhichOneof("scheduling_choice")
        policy = message.config.dynamic_batching.priority_queue_policy
        out["priority_queue_policy"] = {k: v.default_timeout_microseconds for k, v in policy.items()}
print(json.dumps(out))
""",
        payload,
    )
    for name, (_, expected) in cases.items():
        assert theirs[name] == expected, name
        assert decode(name, base64.b64decode(payload[name])) == expected, name
    assert theirs["scheduling_choice"] == "dynamic_batching"
    assert theirs["priority_queue_policy"] == {"2": 7}  # an int key, as JSON writes it


def test_tritonclients_requests_decode_as_ours() -> None:
    requests = {
        "ModelConfigRequest": {"name": "m", "version": "2"},
        "ModelStatisticsRequest": {"name": "m", "version": "1"},
    }
    wire = in_triton(
        """
out = {}
for name, value in payload.items():
    message = json_format.ParseDict(value, getattr(tritonclient.grpc.service_pb2, name)())
    out[name] = base64.b64encode(message.SerializeToString()).decode()
print(json.dumps(out))
""",
        requests,
    )
    for name, value in requests.items():
        assert decode(name, base64.b64decode(wire[name])) == value, name
    assert set(requests) == {request for request, _ in METHODS.values()}


OURS = "mlserver_torchflow.protocol.triton_pb"


@pytest.mark.parametrize(
    "order",
    [
        (OURS, "mlserver.grpc.dataplane_pb2"),
        ("mlserver.grpc.dataplane_pb2", OURS),
        (OURS, "tritonclient.grpc.service_pb2"),
        ("tritonclient.grpc.service_pb2", OURS),
    ],
)
def test_no_clash_with_mlserver_or_tritonclient_in_either_order(order: tuple[str, str]) -> None:
    code = f"""
import importlib, sys
from google.protobuf import descriptor_pool
for name in {list(order)!r}:
    importlib.import_module(name)
from mlserver_torchflow.protocol.triton_pb import decode, encode, message_class
assert decode("ModelConfigResponse", encode("ModelConfigResponse", {{"config": {{"name": "m"}}}})) == {{"config": {{"name": "m"}}}}
if "tritonclient.grpc.service_pb2" not in sys.modules:
    assert "tritonclient" not in sys.modules  # ours never imports it
    try:
        descriptor_pool.Default().FindMessageTypeByName("inference.ModelConfig")
    except KeyError:
        pass  # ours stays out of the default pool
    else:
        raise AssertionError("inference.ModelConfig leaked into the default pool")
if "mlserver.grpc.dataplane_pb2" in sys.modules:
    from mlserver.grpc import dataplane_pb2
    assert message_class("ModelConfig").DESCRIPTOR.file.pool is not dataplane_pb2.DESCRIPTOR.pool
    dataplane_pb2.ModelInferRequest(model_name="m")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a", b"\x0b"])
def test_garbage_bytes_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a valid inference\.ModelConfigResponse"):
        decode("ModelConfigResponse", data)


def test_encode_and_decode_at_the_edges() -> None:
    assert decode("ModelConfigResponse", b"") == {}  # an empty message is valid: all fields default
    assert decode("ModelStatisticsResponse", encode("ModelStatisticsResponse", {})) == {}
    with pytest.raises(ValueError, match="max_batch_size"):
        encode("ModelConfig", {"max_batch_size": "many"})
    with pytest.raises(ValueError, match="dims"):
        encode("ModelInput", {"dims": {"not": "a list"}})
    # ignore_unknown_fields drops an unknown enum name too: the field stays at its default
    assert decode("ModelInput", encode("ModelInput", {"name": "x", "data_type": "TYPE_FP128"})) == {
        "name": "x"
    }
    for missing in ("ModelWarmup", "RepositoryIndexRequest", "ModelRepositoryParameter"):
        with pytest.raises(KeyError, match=f"inference.{missing}"):
            message_class(missing)
    assert message_class("ModelDynamicBatching.PriorityQueuePolicyEntry").DESCRIPTOR.full_name == (
        "inference.ModelDynamicBatching.PriorityQueuePolicyEntry"
    )
    assert triton_pb.SERVICE == "inference.GRPCInferenceService"
