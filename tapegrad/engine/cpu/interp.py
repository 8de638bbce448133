"""The interpreter: plan which slots need a gradient, lay out the gradient arena, and replay a
tape's entries in reverse, dispatching each to its adjoint; runs of elementwise rows replay a
block at a time. The driver (engine_cpu.py) reaches the engine through this module alone."""
import numpy as np

from ...jit import njit
from ...jit.ffi import size_of
from ._generated import ASSIGNS, BLOCKABLE, K_SUM, OP_KERNEL, dispatch  # noqa: F401  (OP_KERNEL: the driver's)
from .context import (ERR_FREED, ERR_NAN, ERR_OPCODE, FLAGS, FREED, FRESH, GPTR, OK, RG, SCRATCH, SIZE, claim,  # noqa: F401
                      fill_slots, grad, pointers)


@njit(cache=True)
def plan(R, S, roots, lo):
    """Mark the slots whose gradient reaches a root; fail on an entry already freed."""
    need = np.zeros(S.shape[0], np.bool_)
    for r in roots:
        need[r] = True
    for e in range(R.shape[0] - 1, lo - 1, -1):
        o = R[e, 4]
        if not need[o]:
            continue
        if S[o, 1] & FREED:
            return ERR_FREED, e, need
        for k in range(1, 4):
            s = R[e, k]
            if s >= 0 and (S[s, 1] & RG):
                need[s] = True
    return OK, -1, need


@njit(cache=True)
def arena(S, hoff, need, export, witness):
    """Offsets of the non-exported gradient buffers in one zeroed arena."""
    goff = np.full(S.shape[0], -1, np.int64)
    total = 0
    for s in range(S.shape[0]):
        if need[s] and export[s] == 0:
            goff[s] = total
            total += size_of(S[s, 0], hoff)
    return goff, np.zeros(total, witness.dtype)


@njit(cache=True)
def has_nan(a):
    for v in a:
        if v != v:
            return True
    return False


@njit(cache=True)
def replay(R, RF, S, hoff, export, need, goff, garena, lo, hi, tcode, witness, op_kernel, check_nan):
    """Walk entries hi-1 .. lo in reverse, running the adjoint of each one that is needed; returns
    (status, entry, operand). With ``check_nan`` (anomaly mode) stop at the first entry whose adjoint
    makes the gradient of one of its operands NaN. A gradient already NaN before the entry ran (a
    NaN seed) does not count against it: the entry that reads it next is blamed, as torch's check
    of each node's outputs blames it. (A flag here, not a second replay: that would compile the
    interpreter's dispatch once more, half a minute on a first use.)"""
    C = (pointers(R, S, hoff, export, need, goff, garena), witness, tcode, hoff)
    P = C[0]
    before = np.zeros(3, np.bool_)
    for e in range(hi - 1, lo - 1, -1):
        if need[R[e, 4]]:
            if check_nan:
                for k in range(3):
                    s = R[e, 1 + k]
                    before[k] = s >= 0 and P[s, GPTR] != 0 and has_nan(grad(C, s))
            if dispatch(op_kernel[R[e, 0]], e, R, RF, C) != OK:
                return ERR_OPCODE, e, -1
            if check_nan:
                for k in range(3):
                    s = R[e, 1 + k]
                    if s >= 0 and P[s, GPTR] != 0 and not before[k] and has_nan(grad(C, s)):
                        return ERR_NAN, e, k
    return OK, -1, -1


@njit(cache=True)
def arena_packed(R, S, hoff, need, export, witness):
    """``arena`` with liveness packing: once a slot's producer has run in the reverse walk its
    gradient is consumed, and its region serves a slot first written later. A long elementwise
    chain then needs a few buffers, not one per entry (W3: 24 MiB instead of 64 MiB of fresh,
    page-faulting zeroes per backward). The arena is left uninitialised: ``replay_packed``
    zeroes each region just before its first write. Only for whole-tape replays (``backward``):
    segmented replays (hooks, custom Functions) read gradients between segments."""
    n = S.shape[0]
    goff = np.full(n, -1, np.int64)
    size = np.zeros(n, np.int64)
    free_off = np.empty(n, np.int64)
    free_len = np.empty(n, np.int64)
    nfree = 0
    total = 0
    for e in range(R.shape[0] - 1, -1, -1):
        o = R[e, 4]
        if not need[o]:
            continue
        for k in range(1, 4):
            s = R[e, k]
            if s < 0 or not need[s] or export[s] != 0 or goff[s] >= 0:
                continue
            m = size_of(S[s, 0], hoff)
            best = -1
            for f in range(nfree):  # best fit among the consumed regions
                if free_len[f] >= m and (best < 0 or free_len[f] < free_len[best]):
                    best = f
            if best < 0:
                goff[s] = total
                total += m
            else:
                goff[s] = free_off[best]
                free_off[best] += m
                free_len[best] -= m
                if free_len[best] == 0:
                    nfree -= 1
                    free_off[best], free_len[best] = free_off[nfree], free_len[nfree]
            size[s] = m
        if goff[o] >= 0 and size[o] > 0:  # this entry consumes o's gradient
            free_off[nfree], free_len[nfree] = goff[o], size[o]
            nfree += 1
    return goff, np.empty(total, witness.dtype)


# -- blocked runs -------------------------------------------------------------------------------
# Consecutive rows whose adjoints are elementwise over slots of one size N (W3's whole backward:
# sum, add, pow, tanh, mul, exp, neg, mul, sin on 1M values) are replayed a block of BLOCK
# elements at a time, each row in turn on the block, then the next block: the gradients passed
# between the rows stay in cache instead of each row streaming N-element arrays through memory.
BLOCK = 4096


@njit(cache=True)
def run_size(e, R, P, op_kernel):
    """N when row e may join a blocked run: an elementwise adjoint (BLOCKABLE) whose operands and
    output all hold N > BLOCK elements, or a full sum of N elements (its output holds one); else 0.
    Operands of other sizes would broadcast, which indexes by shape, not block by block."""
    k = op_kernel[R[e, 0]]
    if not BLOCKABLE[k]:
        return 0
    n = P[R[e, 1], SIZE]
    if n <= BLOCK:
        return 0
    for j in range(2, 5):
        s = R[e, j]
        if s >= 0 and P[s, SIZE] != (1 if j == 4 and k == K_SUM else n):
            return 0
    return n


@njit(cache=True)
def own_gradients(R, P, need, goff, saved, end, top, n, witness):
    """Give the gradients that live only inside the run of rows end..top a block-sized scratch
    each (SCRATCH): written and consumed block by block, they then never leave the cache. Such a
    gradient is the output of a row of the run, an arena region (not the caller's), and still
    FRESH when the run starts (no row above the run wrote it). Returns the scratch buffer."""
    count = 0
    for r in range(end, top + 1):
        o = R[r, 4]
        if need[o] and goff[o] >= 0 and P[o, SIZE] == n and P[o, FLAGS] & FRESH:
            count += 1
    scratch = np.empty(count * BLOCK, witness.dtype)
    base = scratch.ctypes.data
    for r in range(end, top + 1):
        o = R[r, 4]
        if need[o] and goff[o] >= 0 and P[o, SIZE] == n and P[o, FLAGS] & FRESH:
            saved[o] = P[o, GPTR]
            P[o, GPTR] = base
            P[o, FLAGS] |= SCRATCH
            base += BLOCK * scratch.itemsize
    return scratch


@njit(cache=True)
def keep_flags(R, P, flags, end, top, restore):
    """Save (or restore) the flags of the slots of rows end..top."""
    for r in range(end, top + 1):
        for j in range(1, 5):
            s = R[r, j]
            if s >= 0:
                if restore:
                    P[s, FLAGS] = flags[s]
                else:
                    flags[s] = P[s, FLAGS]


@njit(cache=True)
def replay_packed(R, RF, S, hoff, export, roots, need, goff, garena, tcode, witness, op_kernel):
    """``replay`` over the whole tape with an ``arena_packed`` arena: each region, and each buffer
    of the caller but the seeds (allocated uninitialised), is written first by an adjoint that
    assigns (ASSIGNS), or zeroed just before one that accumulates. Runs of elementwise rows go
    block by block (BLOCK): every block sees the FRESH flags the run started with, so each block's
    first write assigns as the whole buffer's would."""
    P = pointers(R, S, hoff, export, need, goff, garena)
    W = P[P.shape[0] - 1]  # the window (a view: span reads it through P)
    C = (P, witness, tcode, hoff)
    for s in range(goff.shape[0]):  # arena regions and the caller's buffers (but the seeds) are fresh
        if goff[s] >= 0 or (export[s] != 0 and need[s]):
            P[s, FLAGS] |= FRESH
    for r in roots:
        P[r, FLAGS] &= ~FRESH
    top, end = -1, 0  # the blocked run under way: rows top down to end (top < 0: none)
    flags = np.empty(P.shape[0], np.int64)  # the run's slots' flags at its start
    saved = np.empty(P.shape[0], np.int64)  # arena pointers of the gradients a run keeps in scratch
    scratch = np.empty(0, witness.dtype)
    e = R.shape[0] - 1
    while e >= 0:
        o = R[e, 4]
        if need[o]:
            if top < 0:  # does a run of two rows or more start here?
                n = run_size(e, R, P, op_kernel)
                f = e - 1
                while n and f >= 0 and (not need[R[f, 4]] or run_size(f, R, P, op_kernel) == n):
                    if need[R[f, 4]]:
                        end = f
                        top = e
                    f -= 1
                if top >= 0:
                    scratch = own_gradients(R, P, need, goff, saved, end, top, n, witness)
                    keep_flags(R, P, flags, end, top, False)
                    W[0], W[1], W[2] = n, 0, BLOCK
            if claim(C, o):  # no adjoint wrote it (x ** 0, sign...): a zero gradient
                grad(C, o)[:] = 0
            k = op_kernel[R[e, 0]]
            if not ASSIGNS[k]:
                for j in range(1, 4):
                    s = R[e, j]
                    if s >= 0 and claim(C, s):
                        grad(C, s)[:] = 0
            if dispatch(k, e, R, RF, C) != OK:
                return ERR_OPCODE, e
        if top >= 0 and e == end:  # the block is done: the next one from the top, or leave the run
            if W[2] < W[0]:
                keep_flags(R, P, flags, end, top, True)
                W[1], W[2] = W[2], min(W[2] + BLOCK, W[0])
                e = top
                continue
            W[:] = 0
            for r in range(end, top + 1):  # the run's own gradients are consumed: back to the arena
                o = R[r, 4]
                if P[o, FLAGS] & SCRATCH:
                    P[o, FLAGS] &= ~SCRATCH
                    P[o, GPTR] = saved[o]
            top = -1
        e -= 1
    for s in range(goff.shape[0]):  # a needed gradient that nothing wrote is zero
        if claim(C, s):
            grad(C, s)[:] = 0
    return OK, -1


@njit(cache=True)
def backward(R, RF, S, hoff, export, roots, tcode, witness, op_kernel, release):
    """The whole backward of one tape in one call: plan, arena, replay. With ``release``, mark
    the replayed entries' outputs FREED afterwards (``Tape.release`` does it otherwise); the last
    value returned counts the entries still unfreed (0: the tape can drop every value)."""
    status, where, need = plan(R, S, roots, 0)
    if status != OK:
        return status, where, need, -1
    goff, garena = arena_packed(R, S, hoff, need, export, witness)
    status, where = replay_packed(R, RF, S, hoff, export, roots, need, goff, garena, tcode, witness, op_kernel)
    left = -1
    if release and status == OK:
        left = 0
        for e in range(R.shape[0]):
            o = R[e, 4]
            if need[o]:
                S[o, 1] |= FREED
            elif not S[o, 1] & FREED:
                left += 1
    return status, where, need, left
