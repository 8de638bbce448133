"""The tape as data: one row per recorded op with its operands, output slot and attributes; slots
with flags and versions; growth; the lifecycle (closed by a backward, freed when unreachable,
linked to the next tape); one tape per thread."""
import gc
import threading
import weakref

import numpy as np

import tapegrad as tg
from tapegrad import ops
from tapegrad.tape import FREED, LEAF, LINK, REQUIRES_GRAD, Tape, current_tape


def fresh():
    """Close whatever tape this thread records on, so the test starts one of its own."""
    current_tape().closed = True


def test_each_op_appends_one_row_naming_its_operands_and_output():
    fresh()
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    z = y.exp() + y
    tape = z._tape
    R, RF = tape.row_table()
    assert tape.n == 3 and R.shape == (3, 8)
    names = [ops.TABLE[code].name for code in R[:, 0]]
    assert names == ["mul_scalar", "exp", "add"]
    assert RF[0, 7] == 3.0  # the scalar operand rides in f0
    x_slot, y_slot, e_slot, z_slot = R[0, 1], R[0, 4], R[1, 4], R[2, 4]
    assert (R[1, 1], R[2, 1], R[2, 2]) == (y_slot, e_slot, y_slot)
    assert (y._slot, z._slot) == (y_slot, z_slot)
    S = tape.slot_table()
    assert S[x_slot, 1] & LEAF and S[x_slot, 1] & REQUIRES_GRAD
    assert not S[y_slot, 1] & LEAF and S[y_slot, 1] & REQUIRES_GRAD


def test_ops_on_values_that_need_no_grad_record_nothing():
    fresh()
    x = tg.tensor([1.0, 2.0])
    y = (x * 2.0).exp()
    assert y._tape is None and not y.requires_grad
    w = tg.tensor([1.0], requires_grad=True)
    with tg.no_grad():
        assert (w * 2.0)._tape is None


def test_growth_keeps_every_row():
    fresh()
    x = tg.tensor([0.5], dtype=tg.float64, requires_grad=True)
    y = x
    for _ in range(1000):  # past the initial capacity several times over
        y = y * 1.001
    tape = y._tape
    assert tape.n == 1000 and tape.cap >= 1000
    R, RF = tape.row_table()
    assert (R[1:, 1] == R[:-1, 4]).all()  # each row reads the previous one's output
    assert (RF[:, 7] == 1.001).all()
    y.backward()
    np.testing.assert_allclose(x.grad.item(), 1.001 ** 1000, rtol=1e-12)


def test_a_backward_closes_the_tape_and_the_next_op_links_to_it():
    fresh()
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    y.sum().backward(retain_graph=True)
    old = y._tape
    assert old.closed
    z = y * 2.0  # recorded on a fresh tape that refers to y's slot on the old one
    assert z._tape is not old
    link = z._tape.row_table()[0][0, 1]
    assert z._tape.slot_table()[link, 1] & LINK
    assert z._tape.links[link] == (old, y._slot)
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([1.0, 2.0]) * 3)


def test_a_freed_graph_keeps_its_rows_and_marks_the_entries_it_consumed():
    fresh()
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    y.sum().backward()
    tape = y._tape
    assert tape.n == 2  # the rows stay (grad_fn names, the dump)
    assert tape.slot_table()[y._slot, 1] & FREED


def test_a_tape_no_tensor_reaches_is_freed():
    fresh()
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2.0).exp()
    ref = weakref.ref(y._tape)
    del y
    fresh()
    gc.collect()
    assert ref() is None


def test_in_place_ops_bump_the_version_recorded_in_the_slot():
    fresh()
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1.0
    assert y._version == 0
    y.add_(1.0)
    assert y._version == 1
    y.mul_(2.0)
    assert y._version == 2


def test_each_thread_records_on_its_own_tape():
    fresh()
    x = tg.tensor([1.0], requires_grad=True)
    mine = (x * 2.0)._tape
    theirs = []

    def other():
        theirs.append((x * 3.0)._tape)
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert isinstance(theirs[0], Tape) and theirs[0] is not mine
