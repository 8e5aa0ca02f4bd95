"""The input shapes a pt2 program was exported for, as rules a request is checked against (no torch).

A `torch.export` program guards its inputs: a dimension may be fixed (a pt2 exported from a one-row
example takes exactly one row: MLflow marks only dimensions above 1 dynamic), several inputs may
share one size (a symbol), and a symbol may have a range. A request that breaks a guard is the
client's mistake: it gets a 400 that names the inputs and the rule here, before it reaches the model
or joins a batch, instead of the model's `AssertionError: Guard failed` as a 500.

`engine.loading` reads the rules from the program; the runtime passes them in the `Interface`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..common import quote
from ..errors import InvalidInput

# torch.export records 2 as the least size of every dynamic dimension (it specialises 0 and 1) and yet
# accepts 1 at run time: only a larger minimum is one the user asked for.
_RECORDED_MINIMUM = 2


@dataclass(frozen=True)
class Dim:
    """One dimension of one input: a fixed `size`, or a `symbol` (None and None: not checked)."""

    size: int | None = None
    symbol: str | None = None


@dataclass(frozen=True)
class ShapeRules:
    """Per input, in forward order, its dimensions; per symbol, its range (`high` None: unbounded)."""

    inputs: tuple[tuple[Dim, ...], ...]
    ranges: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    def check(self, names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> None:
        """Raise `InvalidInput` naming the inputs and the rule a request's shapes break."""
        if len(shapes) != len(self.inputs):
            return  # the signature's own check reports a wrong number of inputs
        seen: dict[str, tuple[str, int, int]] = {}
        for name, shape, dims in zip(names, shapes, self.inputs, strict=True):
            if len(shape) != len(dims):
                raise InvalidInput(
                    f"input {quote(name)}: expected {len(dims)} dimensions ({self._shape(dims)}), got "
                    f"shape {list(shape)}."
                )
            for axis, (got, dim) in enumerate(zip(shape, dims, strict=True)):
                if dim.size is not None and got != dim.size:
                    raise InvalidInput(self._fixed(name, axis, dim.size, got))
                if dim.symbol is None:
                    continue
                self._check_range(name, axis, dim.symbol, got)
                first = seen.setdefault(dim.symbol, (name, axis, got))
                if first[2] != got:
                    raise InvalidInput(
                        f"inputs {quote(first[0])} and {quote(name)}: dimension {first[1]} of "
                        f"{quote(first[0])} ({first[2]}) and dimension {axis} of {quote(name)} ({got}) must "
                        "be equal: the model's exported program gives them one size. Send the same number "
                        "there (for a batch dimension: the same number of rows in every input)."
                    )

    def max_rows(self) -> int | None:
        """The most rows a batch may have without breaking a rule; None when the rules set no bound."""
        firsts = [dims[0] for dims in self.inputs if dims]
        if any(d.size is not None for d in firsts):
            return min(d.size for d in firsts if d.size is not None)
        symbols = {d.symbol for d in firsts if d.symbol is not None}
        elsewhere = {d.symbol for dims in self.inputs for d in dims[1:] if d.symbol is not None}
        if symbols & elsewhere:
            return 1  # a batch-dimension size shared with another dimension: concatenating breaks it
        highs = [self.ranges.get(s, (0, None))[1] for s in symbols]
        bounded = [h for h in highs if h is not None]
        return min(bounded) if bounded else None

    def describe(self, names: Sequence[str]) -> str:
        """For the model's metadata: `a [s0, 4], b [s0, 2]; s0 >= 1`."""
        shapes = ", ".join(f"{n} {self._shape(d)}" for n, d in zip(names, self.inputs, strict=False))
        ranges = "; ".join(
            f"{s} {'>= ' + str(self._low(s)) if h is None else f'in [{self._low(s)}, {h}]'}"
            for s, (_, h) in sorted(self.ranges.items())
        )
        return f"{shapes}; {ranges}" if ranges else shapes

    def _check_range(self, name: str, axis: int, symbol: str, got: int) -> None:
        if symbol not in self.ranges:
            return
        low, high = self._low(symbol), self.ranges[symbol][1]
        if got < low or (high is not None and got > high):
            top = "no upper limit" if high is None else str(high)
            raise InvalidInput(
                f"input {quote(name)}: dimension {axis} is {got}; this model's exported program takes "
                f"{low} to {top} there."
            )

    def _low(self, symbol: str) -> int:
        low = self.ranges.get(symbol, (1, None))[0]
        return low if low > _RECORDED_MINIMUM else 1

    @staticmethod
    def _shape(dims: tuple[Dim, ...]) -> str:
        return "[" + ", ".join(str(d.size) if d.size is not None else (d.symbol or "?") for d in dims) + "]"

    @staticmethod
    def _fixed(name: str, axis: int, size: int, got: int) -> str:
        text = (
            f"input {quote(name)}: dimension {axis} must be {size}, got {got}: the model's exported program "
            "was traced with that size fixed."
        )
        if axis == 0 and size == 1:
            text += (
                " It was exported from a one-row input example (MLflow marks only dimensions above 1 "
                "dynamic), so it takes one row per request: send one row, or re-save the model with an "
                "input example of two or more rows."
            )
        return text
