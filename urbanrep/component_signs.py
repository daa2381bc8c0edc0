"""One sign rule for principal-component scores, shared by every place that writes or reads them.

An SVD fixes each component only up to its sign, and which sign it returns depends on the row
order and the LAPACK build. :func:`fixed_signs` sets each column's sign so that its third moment
(the sum of its cubed scores) is positive: the long tail of a component's scores points the same
way whatever the order of the regions. It serves the mobility expert's flow-profile inputs
(:func:`urbanrep.experts.mobility.city_flow_profile`), where the sign reaches training, and the
written hop blocks (:func:`urbanrep.smoothing.leading_components`), where it only names a
direction. A column whose third moment is zero keeps the sign it has.

Shapes: ``scores`` ``[N, k]``, a NumPy array or a torch tensor; the result has the same type.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def fixed_signs(scores: T) -> T:
    """``scores`` ``[N, k]`` with each column negated where its third moment is negative.

    Works on NumPy arrays and torch tensors alike (the same arithmetic, no library call).

    Args:
        scores: ``[N, k]`` principal-component scores (any float dtype).

    Returns:
        ``[N, k]`` of the same type and dtype.
    """
    negative = (scores ** 3).sum(0) < 0  # type: ignore[operator]
    return scores - 2 * (negative * scores)  # type: ignore[operator,no-any-return]  # a bool keeps the float dtype
