"""What every bound of this package returns: a value that says what it is.

Every public bound function returns an object with

    value      the number (float; `UpperBoundResult.value` is None when no upper bound is available)
    kind       "lower" (a lower bound of the Lipschitz constant), "upper" (an upper bound), "exact" (the constant
               itself), or "estimate" (neither guaranteed: e.g. the evolution bounds, built from maxima that err low)
    errs       which way the value may differ from what it claims to be: "low" (lower bounds, estimates built
               from lower estimates), "high" (upper bounds), "none" (exact)
    certified  whether that direction is guaranteed (up to floating-point rounding) rather than likely

(`BoundResult`, a Protocol). Results with more to say keep their own classes (`LowerBoundStats`,
`UpperBoundResult`, `ExactLipschitz`, `OptimisedLowerBound`) and implement these four attributes; the bounds that
are one number return a `Bound`, a `float` carrying them, so arithmetic and formatting work as on the plain float
they used to return.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

Kind = Literal["lower", "upper", "exact", "estimate"]
Errs = Literal["low", "high", "none"]

KINDS: tuple[str, ...] = ("lower", "upper", "exact", "estimate")
DEFAULT_ERRS: dict[str, str] = {"lower": "low", "upper": "high", "exact": "none"}
"""The direction a bound of each kind errs in (an estimate must say its own)."""

__all__ = ["Bound", "BoundResult", "Errs", "Kind"]


@runtime_checkable
class BoundResult(Protocol):
    """The four attributes every bound's result has (see the module doc)."""

    @property
    def value(self) -> float | None: ...

    @property
    def kind(self) -> Kind: ...

    @property
    def errs(self) -> Errs: ...

    @property
    def certified(self) -> bool: ...


class Bound(float):
    """A bound that is one number: a `float` (arithmetic gives plain floats) with `kind`, `errs`, `certified`
    and `method` (how it was computed, e.g. "ECLipsE-Fast"). `value` is the plain float.

        b = eclipse_fast(net)      # Bound(3.2, kind='upper', errs='high', certified=True, method='ECLipsE-Fast')
        b.value, b.kind, 0.5 * b   # 3.2, 'upper', 1.6
    """

    kind: Kind
    errs: Errs
    certified: bool
    method: str

    def __new__(cls, value: float, kind: Kind, *, certified: bool, errs: Errs | None = None, method: str = "") -> Bound:
        if kind not in KINDS:
            raise ValueError(f"Bound: kind must be one of {KINDS}, got {kind!r}")
        if errs is None:
            if kind not in DEFAULT_ERRS:
                raise ValueError("Bound: an estimate must say which way it errs (errs='low' | 'high' | 'none')")
            errs = DEFAULT_ERRS[kind]
        if errs not in ("low", "high", "none"):
            raise ValueError(f"Bound: errs must be 'low', 'high' or 'none', got {errs!r}")
        self = super().__new__(cls, value)
        self.kind, self.errs, self.certified, self.method = kind, errs, bool(certified), method
        return self

    @property
    def value(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        method = f", method={self.method!r}" if self.method else ""
        return f"Bound({float(self)!r}, kind={self.kind!r}, errs={self.errs!r}, certified={self.certified}{method})"

    def __str__(self) -> str:  # print(b), f"{b}" and str(b) show the number, as for the float it was
        return float.__repr__(self)

    def __reduce__(self):
        return (_bound, (float(self), self.kind, self.certified, self.errs, self.method))


def _bound(value: float, kind: Kind, certified: bool, errs: Errs, method: str) -> Bound:
    return Bound(value, kind, certified=certified, errs=errs, method=method)
