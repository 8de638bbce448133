"""The CPU engine as the generated dispatch sees it: every row reaches a kernel, the flags the
interpreter relies on match each adjoint's declaration, and the planner's marks."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad import ops

_generated = pytest.importorskip("tapegrad.engine.cpu._generated")
from tapegrad.engine.cpu import adjoints, context, interp  # noqa: E402


def test_every_row_dispatches_to_the_kernel_it_names():
    assert len(_generated.OP_KERNEL) == len(ops.TABLE)
    for op in ops.TABLE:
        assert _generated.KERNELS[_generated.OP_KERNEL[op.code]] == op.kernel, op.name


def test_kernel_constants_index_the_kernel_list():
    for i, name in enumerate(_generated.KERNELS):
        assert getattr(_generated, "K_" + name[len("adj_"):].upper()) == i
        assert callable(getattr(_generated, name))


def test_write_flags_are_the_adjoints_declarations():
    for i, name in enumerate(_generated.KERNELS):
        assigns, blockable, _ = adjoints.DECLARED[name]
        assert bool(_generated.ASSIGNS[i]) == assigns, name
        assert bool(_generated.BLOCKABLE[i]) == blockable, name


def test_formula_rows_have_generated_assigning_blockable_adjoints():
    hand = {n for n in adjoints.DECLARED if hasattr(adjoints, n)}
    for op in ops.TABLE:
        if op.formula is not None and op.kernel not in hand:
            k = _generated.KERNELS.index(op.kernel)
            assert _generated.ASSIGNS[k] and _generated.BLOCKABLE[k], op.name


def test_plan_marks_what_reaches_the_roots_and_reports_a_freed_entry():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    c = tg.tensor([3.0, 4.0])
    y = x.exp()
    side = (x * 5.0).sum()  # on the tape, but not on the way to z
    z = (y * c).sum()
    tape = z._tape
    R, _ = tape.row_table()
    S = tape.raw_slots()
    status, _, need = interp.plan(R, S, np.array([z._slot]), np.zeros(0, np.int8))
    assert status == context.OK
    assert need[z._slot] and need[y._slot] and need[tape.slot_of(x)]
    assert not need[side._slot]
    z.backward()  # frees what the nodes saved: y * c's c and exp's output, not the sum (it saved nothing)
    status, where, _ = interp.plan(R, tape.raw_slots(), np.array([z._slot]), np.zeros(0, np.int8))
    assert status == context.ERR_FREED and ops.TABLE[R[where, 0]].name == "mul"
