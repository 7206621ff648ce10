"""A precision: what an engine is built at, parsed once from user text and carried typed from there on.

The five precisions are the four numeric ones (FP32, TF32, FP16, INT8) plus ``int8-qdq``, TensorRT's explicit
INT8 path (a Q/DQ model, the one TensorRT 11 keeps); plain ``int8`` on TensorRT is implicit INT8 through a
calibrator. A ``Precision`` is a ``str`` (its name), so records, reports and cache keys that held the name before
hold the same text now; code asks it ``.is_int8`` or ``.numeric`` instead of matching on the text.

User text becomes a ``Precision`` at the edges only: the command line (``kinship engines --precisions``), a flow's
parameters (``plan_run``, an engines or engine-build run) and a record read back from the store.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Iterable, Literal

from kinship.errors import UserError


class Precision(StrEnum):
    """One build precision; its value is the name users type and reports show."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    INT8 = "int8"
    INT8_QDQ = "int8-qdq"

    @property
    def is_int8(self) -> bool:
        """INT8 either way (implicit with a calibrator, or explicit Q/DQ): both read the calibration set."""
        return self in (Precision.INT8, Precision.INT8_QDQ)

    @property
    def numeric(self) -> "Precision":
        """The arithmetic the engine runs at (``int8-qdq`` -> ``int8``): a report's ``precision`` column."""
        return Precision.INT8 if self.is_int8 else self

    @classmethod
    def parse(cls, text: str) -> "Precision":
        """``"FP16"`` -> ``Precision.FP16``; anything else is one ``UserError`` listing the valid names."""
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise UserError(f"unknown precision {text!r}: choose from {', '.join(PRECISIONS)}") from None


PRECISIONS: tuple[Precision, ...] = tuple(Precision)
# The flow parameter schemas list the names (the Prefect UI offers them); ``tests/test_engines_build.py`` checks
# that this type and ``Precision`` name the same five.
PrecisionName = Literal["fp32", "tf32", "fp16", "int8", "int8-qdq"]
DEFAULT_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)


def parse_precisions(text: str | Iterable[str]) -> tuple[Precision, ...]:
    """``"fp32,fp16,int8"`` (or a list of names) -> de-duplicated precisions in the given order.

    Unknown names, or none at all, are one ``UserError`` naming them and the valid ones."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else map(str, text))]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PRECISIONS]
    if unknown or not names:
        raise UserError(f"unknown precision {', '.join(unknown) or '(none given)'!s}: choose from {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(Precision(n) for n in names))
