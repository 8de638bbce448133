"""Bad input to the op surface raises torch's exception type with torch's key words and the shapes
involved, never an error from inside NumPy or Numba. Each call runs on torch too when installed,
so the expected words are torch's own."""
import numpy as np
import pytest

import tapegrad as tg


def x34(lib):
    return lib.ones(3, 4, requires_grad=True)


def i(lib, v):
    return lib.tensor(v)


def b(lib, shape):
    return lib.ones(*shape, dtype=lib.bool)


DIM = r"Dimension out of range \(expected to be in range of \[-2, 1\], but got {}\)"

# (id, call(lib), exception type, regex of key words)
CASES = [
    # dims out of range
    ("sum_dim", lambda lib: x34(lib).sum(2), IndexError, DIM.format(2)),
    ("sum_tuple", lambda lib: x34(lib).sum((0, 5)), IndexError, DIM.format(5)),
    ("sum_dup", lambda lib: x34(lib).sum((0, 0)), RuntimeError, "dim 0 appears multiple times in the list of dims"),
    ("softmax_dim", lambda lib: x34(lib).softmax(3), IndexError, DIM.format(3)),
    ("log_softmax_dim", lambda lib: x34(lib).log_softmax(-3), IndexError, DIM.format(-3)),
    ("max_dim", lambda lib: x34(lib).max(4), IndexError, DIM.format(4)),
    ("amax_dim", lambda lib: x34(lib).amax(2), IndexError, DIM.format(2)),
    ("cumsum_dim", lambda lib: x34(lib).cumsum(-3), IndexError, DIM.format(-3)),
    ("var_dim", lambda lib: x34(lib).var(3), IndexError, DIM.format(3)),
    ("norm_dim", lambda lib: x34(lib).norm(dim=3), IndexError, DIM.format(3)),
    ("logsumexp_dim", lambda lib: x34(lib).logsumexp(2), IndexError, DIM.format(2)),
    ("prod_dim", lambda lib: x34(lib).prod(2), IndexError, DIM.format(2)),
    ("cat_dim", lambda lib: lib.cat([x34(lib), x34(lib)], 2), IndexError, DIM.format(2)),
    ("flip_dim", lambda lib: x34(lib).flip(2), IndexError, DIM.format(2)),
    ("squeeze_dim", lambda lib: x34(lib).squeeze(3), IndexError, DIM.format(3)),
    ("unsqueeze_dim", lambda lib: x34(lib).unsqueeze(3), IndexError,
     r"Dimension out of range \(expected to be in range of \[-3, 2\], but got 3\)"),
    ("index_select_dim", lambda lib: x34(lib).index_select(2, i(lib, [0])), IndexError, DIM.format(2)),
    ("max_empty_dim", lambda lib: lib.ones(0, 3).max(0), IndexError, r"max\(\): Expected reduction dim 0 to have non-zero size"),
    ("max_empty", lambda lib: lib.ones(0).max(), RuntimeError, "Expected reduction dim to be specified for input.numel"),
    ("amax_empty", lambda lib: lib.ones(0).amax(), RuntimeError, "Expected reduction dim to be specified for input.numel"),
    # indices out of bounds
    ("getitem_int", lambda lib: x34(lib)[5], IndexError, "index 5 is out of bounds for dimension 0 with size 3"),
    ("getitem_list", lambda lib: x34(lib)[[0, 7]], IndexError, "index 7 is out of bounds for dimension 0 with size 3"),
    ("getitem_tensor", lambda lib: x34(lib)[i(lib, [0, -9])], IndexError, "index -9 is out of bounds for dimension 0 with size 3"),
    ("getitem_float", lambda lib: x34(lib)[lib.tensor([1.0])], IndexError,
     "tensors used as indices must be long, int, byte or bool tensors"),
    ("index_select_oob", lambda lib: x34(lib).index_select(0, i(lib, [3])), IndexError, "index out of range in self"),
    ("index_select_float", lambda lib: x34(lib).index_select(0, lib.tensor([1.0])), RuntimeError,
     "Expected dtype int32 or int64 for index"),
    ("gather_oob", lambda lib: x34(lib).gather(1, i(lib, [[4]])), RuntimeError,
     "index 4 is out of bounds for dimension 1 with size 4"),
    ("gather_ndim", lambda lib: x34(lib).gather(1, i(lib, [1])), RuntimeError,
     "Index tensor must have the same number of dimensions as input tensor"),
    ("gather_float", lambda lib: x34(lib).gather(1, lib.tensor([[1.0]])), RuntimeError, "Expected dtype int32/int64 for index"),
    ("scatter_add_oob", lambda lib: x34(lib).scatter_add(1, i(lib, [[9]]), lib.ones(1, 1)), RuntimeError,
     "index 9 is out of bounds for dimension 1 with size 4"),
    # masks of the wrong shape
    ("mask_getitem", lambda lib: x34(lib)[b(lib, (2,))], IndexError,
     r"The shape of the mask \[2\] at index 0 does not match the shape of the indexed tensor \[3, 4\] at index 0"),
    ("mask_getitem_2d", lambda lib: x34(lib)[b(lib, (3, 3))], IndexError,
     r"The shape of the mask \[3, 3\] at index 1 does not match the shape of the indexed tensor \[3, 4\] at index 1"),
    ("masked_fill_shape", lambda lib: x34(lib).masked_fill(b(lib, (2,)), 0.0), RuntimeError,
     r"The size of tensor a \(2\) must match the size of tensor b \(4\) at non-singleton dimension 1"),
    ("masked_fill_float_mask", lambda lib: x34(lib).masked_fill(lib.ones(4), 0.0), RuntimeError,
     "masked_fill_ only supports boolean masks, but got mask with dtype float"),
    ("where_shape", lambda lib: lib.where(b(lib, (2,)), x34(lib), x34(lib)), RuntimeError,
     r"The size of tensor a \(2\) must match the size of tensor b \(4\) at non-singleton dimension 1"),
    # malformed einsum specs
    ("einsum_size", lambda lib: lib.einsum("ij,jk", x34(lib), x34(lib)), RuntimeError,
     "subscript j has size 3 for operand 1 which does not broadcast with previously seen size 4"),
    ("einsum_operands", lambda lib: lib.einsum("ij,jk->ik", x34(lib)), RuntimeError,
     "fewer operands were provided than specified in the equation"),
    ("einsum_output", lambda lib: lib.einsum("ij,j->ik", x34(lib), lib.ones(4)), RuntimeError,
     "output subscript k does not appear in the equation for any input operand"),
    ("einsum_char", lambda lib: lib.einsum("ij-ik", x34(lib)), RuntimeError, "invalid subscript given at index 2"),
    ("einsum_ndim", lambda lib: lib.einsum("i,jk->ijk", x34(lib), x34(lib)), RuntimeError,
     r"the number of subscripts in the equation \(1\) does not match the number of dimensions \(2\) for operand 0"),
    # matmul shapes and dtypes
    ("matmul_shape", lambda lib: x34(lib) @ lib.ones(3, 4), RuntimeError,
     r"mat1 and mat2 shapes cannot be multiplied \(3x4 and 3x4\)"),
    ("matmul_dtype", lambda lib: x34(lib) @ lib.ones(4, 3, dtype=lib.float64), RuntimeError,
     "expected m1 and m2 to have the same dtype, but got: float != double"),
    ("matmul_batch", lambda lib: lib.ones(2, 3, 4) @ lib.ones(3, 4, 5), RuntimeError,
     r"The size of tensor a \(2\) must match the size of tensor b \(3\) at non-singleton dimension 0"),
    ("matmul_1d", lambda lib: lib.ones(3) @ lib.ones(4), RuntimeError,
     r"inconsistent tensor size, expected tensor \[3\] and src \[4\]"),
    ("matmul_2d_1d", lambda lib: x34(lib) @ lib.ones(3), RuntimeError, r"size mismatch, got input \(3\), mat \(3x4\), vec \(3\)"),
    ("mv", lambda lib: x34(lib).mv(lib.ones(3)), RuntimeError, r"size mismatch, got input \(3\), mat \(3x4\), vec \(3\)"),
    ("bmm_ndim", lambda lib: lib.bmm(x34(lib), x34(lib)), RuntimeError, "batch1 must be a 3D tensor"),
    ("bmm_shape", lambda lib: lib.bmm(lib.ones(2, 3, 4), lib.ones(3, 4, 5)), RuntimeError,
     r"Expected size for first two dimensions of batch2 tensor to be: \[2, 4\] but got: \[3, 4\]"),
    ("dot_ndim", lambda lib: lib.dot(x34(lib), x34(lib)), RuntimeError, "1D tensors expected, but got 2D and 2D tensors"),
    ("dot_size", lambda lib: lib.dot(lib.ones(4), lib.ones(3)), RuntimeError,
     r"inconsistent tensor size, expected tensor \[4\] and src \[3\]"),
    # shape ops
    ("cat_shape", lambda lib: lib.cat([x34(lib), lib.ones(3, 5)]), RuntimeError,
     "Sizes of tensors must match except in dimension 0. Expected size 4 but got size 5 for tensor number 1"),
    ("cat_ndim", lambda lib: lib.cat([x34(lib), lib.ones(4)]), RuntimeError,
     "Tensors must have same number of dimensions: got 2 and 1"),
    ("cat_empty", lambda lib: lib.cat([]), ValueError, "expected a non-empty list of Tensors"),
    ("stack_shape", lambda lib: lib.stack([x34(lib), lib.ones(3, 5)]), RuntimeError,
     r"stack expects each tensor to be equal size, but got \[3, 4\] at entry 0 and \[3, 5\] at entry 1"),
    ("repeat_dims", lambda lib: x34(lib).repeat(2), RuntimeError,
     "Number of dimensions of repeat dims can not be smaller than number of dimensions of tensor"),
    ("split_zero", lambda lib: x34(lib).split(0), RuntimeError, "split_size can only be 0 if dimension size is 0"),
    ("split_sections", lambda lib: x34(lib).split([1, 1]), RuntimeError,
     "split_with_sizes expects split_sizes to sum exactly to 3"),
    ("chunk_zero", lambda lib: x34(lib).chunk(0), RuntimeError, "chunk expects `chunks` to be greater than 0, got: 0"),
    ("flatten_order", lambda lib: x34(lib).flatten(1, 0), RuntimeError, "start_dim cannot come after end_dim"),
    ("expand", lambda lib: x34(lib).expand(2, 4), RuntimeError,
     r"The expanded size of the tensor \(2\) must match the existing size \(3\) at non-singleton dimension 0"),
    ("permute_dup", lambda lib: x34(lib).permute(0, 0), RuntimeError, "duplicate dims are not allowed"),
    # elementwise
    ("broadcast", lambda lib: x34(lib) + lib.ones(2, 4), RuntimeError,
     r"The size of tensor a \(3\) must match the size of tensor b \(2\) at non-singleton dimension 0"),
    ("clamp_none", lambda lib: x34(lib).clamp(), RuntimeError, "At least one of 'min' or 'max' must not be None"),
    ("where_cond_dtype", lambda lib: lib.where(lib.ones(3, 4), x34(lib), x34(lib)), RuntimeError,
     "where expected condition to be a boolean tensor"),
    ("gelu_mode", lambda lib: lib.nn.functional.gelu(x34(lib), approximate="fast"), RuntimeError,
     "approximate argument must be either none or tanh"),
    ("norm_int", lambda lib: lib.ones(3, dtype=lib.int64).norm(), RuntimeError,
     "linalg.vector_norm: Expected a floating point or complex tensor as input. Got Long"),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tapegrad_raises_torchs_error(call, exc, words):
    with pytest.raises(exc, match=words):
        call(tg)


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_torch_raises_the_same(call, exc, words):
    torch = pytest.importorskip("torch")
    with pytest.raises(exc, match=words):
        call(torch)


def test_in_place_shape_and_dtype_errors():
    z = tg.ones(3) * 1
    with pytest.raises(RuntimeError, match=r"output with shape \[3\] doesn't match the broadcast shape \[2, 3\]"):
        z.add_(tg.ones(2, 3))
    with pytest.raises(RuntimeError, match="The size of tensor a"):
        z.copy_(tg.ones(4))


def test_out_of_range_values_never_reach_the_interpreter():
    """Bad keys fail at the call, so a later backward sees a consistent tape."""
    x = tg.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = (x * 2).sum()
    for bad in (lambda: x[2], lambda: x.gather(1, tg.tensor([[3, 0, 0], [0, 0, 0]])),
                lambda: x.index_select(1, tg.tensor([-1]))):
        with pytest.raises((IndexError, RuntimeError)):
            bad()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 2.0))
