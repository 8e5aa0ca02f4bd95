"""Read the shape guards of a `torch.export` program as `protocol.shapes.ShapeRules`.

Each user input's fake tensor says, per dimension, a fixed size or a symbol; `range_constraints` gives
each symbol's range. A dimension whose size is an expression (`2*s0`, say) is left unchecked here: the
program still guards it, so a request that breaks it is answered by the model, as before.
"""

from __future__ import annotations

from typing import Any

import torch

from ..protocol.shapes import Dim, ShapeRules


def rules_of(program: Any) -> ShapeRules | None:
    """The rules of every user input, in forward order; None if an input is not a tensor."""
    user = [
        s.arg.name
        for s in program.graph_signature.input_specs
        if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    values = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    inputs = []
    for name in user:
        value = values.get(name)
        if not isinstance(value, torch.Tensor):
            return None
        inputs.append(tuple(_dim(d) for d in value.shape))
    ranges = {
        str(symbol): (_bound(r.lower) or 0, _bound(r.upper))
        for symbol, r in program.range_constraints.items()
    }
    return ShapeRules(tuple(inputs), ranges)


def _dim(size: Any) -> Dim:
    if isinstance(size, int):
        return Dim(size=size)
    expr = size.node.expr
    return Dim(symbol=str(expr)) if getattr(expr, "is_Symbol", False) else Dim()


def _bound(value: Any) -> int | None:
    """An int, or None for an infinite bound (torch's `int_oo`)."""
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError, AttributeError):  # sympy's infinities
        return None
