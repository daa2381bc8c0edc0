"""The one sign rule for principal-component scores (urbanrep.component_signs)."""

import numpy as np
import torch

from urbanrep.component_signs import fixed_signs


def test_fixed_signs_numpy_and_torch_agree_and_keep_dtype():
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32) ** 3
    got = fixed_signs(x)
    assert got.dtype == np.float32 and (np.abs(got) == np.abs(x)).all()
    assert ((got.astype(np.float64) ** 3).sum(0) > 0).all()
    np.testing.assert_array_equal(fixed_signs(-x), got)  # either SVD sign gives the same columns
    t = fixed_signs(torch.from_numpy(x))
    assert t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), got)


def test_fixed_signs_do_not_depend_on_row_order():
    x = np.random.default_rng(1).standard_normal((25, 3)) ** 3
    order = np.random.default_rng(2).permutation(25)
    flipped = x[order] * np.array([-1.0, 1.0, -1.0])  # the rows reordered, two SVD signs the other way
    np.testing.assert_array_equal(fixed_signs(x)[order], fixed_signs(flipped))
