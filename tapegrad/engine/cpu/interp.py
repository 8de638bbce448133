"""The interpreter: plan which slots need a gradient, lay out the gradient arena, and replay a
tape's entries in reverse, dispatching each to its adjoint; runs of elementwise rows replay a
block at a time. The driver reaches the engine through this module alone (engine/cpu_replay.py)."""
import numpy as np

from ...jit import njit
from ...jit.ffi import _decref, _incref, _load_i32, _load_i64, _store_i64, dim_of, ndim_of, size_of
from ._generated import ASSIGNS, BLOCKABLE, K_SUM, OP_KERNEL, SAVES, dispatch  # noqa: F401  (OP_KERNEL, SAVES: the driver's)
from .context import (ERR_FREED, ERR_NAN, ERR_OPCODE, FLAGS, FREED, FRESH, GPTR, LEAF, OK, RG, RUN, SAVE_OUT, SPLIT,  # noqa: F401
                      SCRATCH, SIZE, STOP, claim, fill_slots, grad, pointers)


@njit(cache=True)
def plan(R, S, roots, on):
    """Mark the slots whose gradient reaches a root (RUN); fail on an entry already freed. With
    ``on`` (WANTED and LEADS marks, completed here by ``leads``; empty: every input is wanted) the
    walk stops at the requested inputs, as torch's engine runs only the nodes on a path to one:
    an input that leads to no other is STOP (its gradient delivered, its entry neither run nor
    freed)."""
    need = np.zeros(S.shape[0], np.int8)
    for r in roots:
        need[r] = RUN
    limit = on.shape[0] > 0
    if limit:
        leads(R, S, on)
    for e in range(R.shape[0] - 1, -1, -1):
        o = R[e, 4]
        if not need[o]:
            continue
        if limit and not on[o] & LEADS:
            need[o] = STOP
            continue
        if S[o, 1] & FREED:
            return ERR_FREED, e, need
        for k in range(1, 4):
            s = R[e, k]
            if s >= 0 and (S[s, 1] & RG) and (not limit or on[s]):
                need[s] = RUN
    return OK, -1, need


# ``on``, per slot: a requested input sits here (WANTED), or the entry that made it reads one (LEADS)
WANTED, LEADS = 1, 2


@njit(cache=True)
def leads(R, S, on):
    """Complete ``on`` (WANTED marked, links as their older tape's slots say) with LEADS, in
    recording order: an entry's output leads to a requested input when an input of it that
    requires grad is one or leads to one."""
    for e in range(R.shape[0]):
        o = R[e, 4]
        for k in range(1, 4):
            s = R[e, k]
            if s >= 0 and (S[s, 1] & RG) and on[s]:
                on[o] |= LEADS
                break


# -- what a backward frees -----------------------------------------------------------------------
# An entry that ran saved something exactly when an input of it that requires grad has SAVES bits
# (context.py): torch releases that, so the entry is FREED and a second pass through it fails; one
# that saved nothing replays again (x + 1, sum, views), as torch's nodes do.
@njit(cache=True, inline="always")
def saved(e, R, S, saves):
    """The SAVES bits of entry e: those of its inputs that require grad."""
    m = 0
    for k in range(3):
        s = R[e, 1 + k]
        if s >= 0 and S[s, 1] & RG:
            m |= saves[R[e, 0], k]
    return m


@njit(cache=True)
def free_entries(R, S, need, saves):
    """Mark FREED the entries that ran (RUN) and saved a value; return how many entries are
    left unfreed (0: the tape can drop every value)."""
    left = 0
    for e in range(R.shape[0]):
        o = R[e, 4]
        if need[o] == RUN and saved(e, R, S, saves):
            S[o, 1] |= FREED
        elif not S[o, 1] & FREED:
            left += 1
    return left


_ITEMSIZE = np.array([4, 8, 8, 4, 1], np.int64)  # by dtype code
KEEP_SHAPE, KEEP_VALUE = 1, 2


@njit(cache=True)
def keep_levels(R, S, saves, hoff, small):
    """What each slot must keep once entries are freed, for the entries left unfreed: KEEP_VALUE
    (a value one of them saved; a constant such as an index map they read; a leaf that requires
    grad, which its tensor holds anyway and backward sizes its gradient by; or any of their slots
    of at most ``small`` bytes, dearer to replace than to keep), KEEP_SHAPE (the shape and dtype
    their adjoints read), else nothing."""
    level = np.zeros(S.shape[0], np.int8)
    for e in range(R.shape[0]):
        o = R[e, 4]
        if S[o, 1] & FREED:
            continue
        m = saved(e, R, S, saves)
        for k in range(3):
            s = R[e, 1 + k]
            if s >= 0:
                if m & (1 << k) or not S[s, 1] & RG:
                    level[s] = KEEP_VALUE
                elif not level[s]:
                    level[s] = KEEP_SHAPE
        if m & SAVE_OUT:
            level[o] = KEEP_VALUE
        elif not level[o]:
            level[o] = KEEP_SHAPE
    for s in range(S.shape[0]):
        if S[s, 1] & (LEAF | RG) == LEAF | RG:
            level[s] = KEEP_VALUE
        elif level[s] == KEEP_SHAPE and S[s, 3] >= 0:  # (a dtype with no code here keeps a stub)
            if size_of(S[s, 0], hoff) * _ITEMSIZE[S[s, 3]] <= small:
                level[s] = KEEP_VALUE
    return level


@njit(cache=True, inline="always")
def _type_num(obj, hoff, tn_off):
    return _load_i32(_load_i64(obj + hoff + 40) + tn_off)  # descr->type_num (as fill_slots reads it)


@njit(cache=True)
def _stub_hash(obj, hoff, tn_off, mask):
    h = ndim_of(obj, hoff) * 31 + _type_num(obj, hoff, tn_off)
    for k in range(ndim_of(obj, hoff)):
        h = h * 1000003 + dim_of(obj, hoff, k)
    return h & mask


@njit(cache=True)
def _same_layout(a, b, hoff, tn_off):
    """Whether arrays a and b (addresses) have one shape and dtype."""
    n = ndim_of(a, hoff)
    if n != ndim_of(b, hoff) or _type_num(a, hoff, tn_off) != _type_num(b, hoff, tn_off):
        return False
    for k in range(n):
        if dim_of(a, hoff, k) != dim_of(b, hoff, k):
            return False
    return True


@njit(cache=True)
def find_stub(stubs, obj, hoff, tn_off):
    """The stub in table ``stubs`` (addresses by shape and dtype, open addressing; 0: empty) with
    obj's shape and dtype, or the free position for one as -1 - position."""
    mask = stubs.shape[0] - 1
    i = _stub_hash(obj, hoff, tn_off, mask)
    while stubs[i] != 0:
        if _same_layout(stubs[i], obj, hoff, tn_off):
            return stubs[i]
        i = (i + 1) & mask
    return -1 - i


@njit(cache=True)
def keep(R, S, saves, pinned, values, items_off, none, hoff, tn_off, small, stubs):
    """Once entries are freed: what each slot keeps (``keep_levels``; ``pinned`` slots whole), and
    the tape's ``values`` list (its address) edited to match in one pass (a Python step a slot
    cost 20 ns each, a tenth of a fresh W1 backward): ``values[s] = None`` where nothing is kept,
    a stub of the same shape and dtype from ``stubs`` where the shape is (``S[s, 0]`` follows),
    the references counted as Python counts them. Returns the levels and the slots that need a
    stub the table lacks."""
    level = keep_levels(R, S, saves, hoff, small)
    for s in pinned:
        level[s] = KEEP_VALUE
    items = _load_i64(values + items_off)
    missing = np.empty(S.shape[0], np.int64)
    n = 0
    for s in range(S.shape[0]):
        if level[s] == KEEP_VALUE:
            continue
        p = items + 8 * s
        old = _load_i64(p)
        new = none
        if level[s] == KEEP_SHAPE and old != none:
            new = find_stub(stubs, old, hoff, tn_off)
            if new < 0:
                missing[n] = s
                n += 1
                continue
            S[s, 0] = new
        if old != new:
            _store_i64(p, new)
            _incref(new)
            _decref(old)
    return level, missing[:n]


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
        if need[R[e, 4]] == RUN:
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
        if need[o] != RUN:
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


@njit(cache=True)
def split_size(R, S, hoff, need, op_kernel, least):
    """N (at least ``least``) when every row the backward runs is elementwise over N values
    (``run_size``'s rows: operands and output of N, or a full sum of N into one): its backward then
    splits into independent ranges of the N elements, each its own replay. Else 0, found at the
    first row from the end that does not qualify (a scalar loss's own rows, for most tapes)."""
    n = 0
    for e in range(R.shape[0] - 1, -1, -1):
        if need[R[e, 4]] != RUN:
            continue
        k = op_kernel[R[e, 0]]
        if not BLOCKABLE[k]:
            return 0
        m = size_of(S[R[e, 1], 0], hoff)
        if m < least or (n > 0 and m != n):
            return 0
        n = m
        for j in range(2, 5):
            s = R[e, j]
            if s >= 0 and size_of(S[s, 0], hoff) != (1 if j == 4 and k == K_SUM else n):
                return 0
    return n


@njit(cache=True, nogil=True)
def replay_part(R, RF, S, hoff, export, roots, need, tcode, witness, op_kernel):
    """One range of a split backward (``split_size``): ``S`` and ``export`` address that range's
    views of the N-element values and gradient buffers. Without the GIL: the ranges run on threads."""
    goff, garena = arena_packed(R, S, hoff, need, export, witness)
    return replay_packed(R, RF, S, hoff, export, roots, need, goff, garena, tcode, witness, op_kernel)


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
        if need[o] == RUN:
            if top < 0:  # does a run of two rows or more start here?
                n = run_size(e, R, P, op_kernel)
                f = e - 1
                while n and f >= 0 and (need[R[f, 4]] != RUN or run_size(f, R, P, op_kernel) == n):
                    if need[R[f, 4]] == RUN:
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
def backward(R, RF, S, hoff, export, roots, on, tcode, witness, op_kernel, saves, release, least):
    """The whole backward of one tape in one call: plan (``on`` as there), arena, replay. With
    ``release``, free the entries that ran (``free_entries``; the driver does it otherwise); the
    last value returned counts the entries left unfreed (-1: not released). With ``least`` > 0, a
    tape that ``split_size`` splits is only planned: (SPLIT, N, need, -1), for ``replay_part``."""
    status, where, need = plan(R, S, roots, on)
    if status != OK:
        return status, where, need, -1
    if least > 0:
        n = split_size(R, S, hoff, need, op_kernel, least)
        if n > 0:
            return SPLIT, n, need, -1
    goff, garena = arena_packed(R, S, hoff, need, export, witness)
    status, where = replay_packed(R, RF, S, hoff, export, roots, need, goff, garena, tcode, witness, op_kernel)
    left = -1
    if release and status == OK:
        left = free_entries(R, S, need, saves)
    return status, where, need, left
