"""The CPU engine as the driver sees it (``load()``): the jitted interpreter (``engine.cpu``)
behind the small interface that ``engine.driver`` documents. It lays out the gradient buffers
of one backward over one tape as NumPy arrays, replays the tape into them in one call or in
segments, and frees what a backward without retain_graph ran.

The interpreter reads each value's data pointer, shape and dtype from NumPy's array header and
the values' addresses from the tape's values list; the offsets it reads them at are found and
cross-checked here, once per process, when the engine loads."""
import ctypes

import numpy as np

from .. import malloc, parallel
from ..tape import _DTYPE_CODE

_ENGINE = None
_K = None  # engine.cpu.interp, imported on first use (Numba stays out of `import tapegrad`)
_HOFF = _TNOFF = _LUT = None
_LIST_ITEMS = tuple.__basicsize__  # a list's item pointer follows the variable-size object header


def load():
    """The CPU engine, loaded on the first backward (Numba's import, the cached compilation, the
    ABI probes and the opt-in malloc tuning)."""
    global _ENGINE, _K, _HOFF, _TNOFF, _LUT
    if _ENGINE is None:
        from ..jit import ffi
        from .cpu import interp
        malloc.apply_environment()
        _HOFF = header_offset()
        _TNOFF = typenum_offset()
        _LUT = np.full(256, -2, np.int64)
        for num, code in _DTYPE_CODE.items():
            _LUT[num] = code
        probe = np.arange(6.0).reshape(2, 3)
        if ffi.header_probe(id(probe), _HOFF) != (probe.ctypes.data, 2, 6):
            raise RuntimeError("tapegrad cannot read this NumPy's array header; please report your NumPy version")
        pair = [probe, None]
        if ffi.list_probe(id(pair), _LIST_ITEMS) != (id(probe), id(None)):
            raise RuntimeError("tapegrad cannot read this Python's list layout; please report your Python version")
        _K = interp
        _ENGINE = CpuEngine(interp)
    return _ENGINE


def typenum_offset():
    """Offset of ``type_num`` in a NumPy dtype object (``PyArray_Descr``), found and cross-checked
    on two dtypes; the engine reads it to learn each value's dtype without Python."""
    d64, d32 = np.dtype(np.float64), np.dtype(np.float32)
    w64 = (ctypes.c_int32 * 16).from_address(id(d64))
    w32 = (ctypes.c_int32 * 16).from_address(id(d32))
    for i in range(4, 16):
        if w64[i] == d64.num and w32[i] == d32.num:
            return i * 4
    raise RuntimeError("tapegrad cannot locate type_num in NumPy's dtype objects")


def array_header():
    """header_offset, as checked against this NumPy when the engine loads: for other jitted code
    that reads arrays through their objects (compiled replay, optimizer updates)."""
    load()
    return _HOFF


def header_offset():
    """Offset of the data pointer in a NumPy array object (``PyArrayObject.data``); ndim and the
    dims pointer follow it, as in NumPy's public struct."""
    a = np.empty(3)
    words = (ctypes.c_int64 * 8).from_address(id(a))
    for i in range(8):
        if words[i] == a.ctypes.data:
            return i * 8
    raise RuntimeError("tapegrad cannot locate the data pointer in NumPy's array header")


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_WITNESS = {_F32: np.empty(0, _F32), _F64: np.empty(0, _F64)}


class Pass:
    """One backward over one tape: the gradient buffers (``bufs`` by slot: the seeds, the exported
    slots and, when ``zeroed``, the leaves; ``lbufs`` in the order of ``lslots``), all in the
    tape's float type, and the calls that fill them. The caller has checked that no seed's value
    was freed."""
    __slots__ = ("tape", "R", "RF", "S", "export", "bufs", "lbufs", "roots", "tcode", "witness", "need", "goff",
                 "garena")

    def __init__(self, tape, seeds, lslots, wanted, zeroed):
        self.tape = tape
        self.R, self.RF = tape.row_table()
        S = self.S = tape.raw_slots()
        T = _F64 if _K.fill_slots(S, tape.synced, id(tape.values), _LIST_ITEMS, id(None), _HOFF, _TNOFF,
                                  _LUT) else _F32
        tape.synced = tape.ns
        values = tape.values
        export = self.export = np.zeros(S.shape[0], np.int64)
        bufs = self.bufs = {}
        for s, seed in seeds.items():
            # The kernels read a buffer in C order: an expanded or transposed seed must be laid out anew.
            b = np.array(seed, dtype=T, order="C", copy=True).reshape(values[s].shape)
            bufs[s] = b
            export[s] = id(b)
        # The one-call replay (no hooks, no Functions, no NaN checks) writes or zeroes each exported
        # buffer before reading it (interp.replay_packed): no memset for it.
        alloc = np.zeros if zeroed else np.empty
        # The hot part for a model with many parameters. A leaf slot is never a seed (seeds are outputs).
        lbufs = self.lbufs = [alloc(values[s].shape, T) for s in lslots]
        for s, b in zip(lslots, lbufs):
            export[s] = id(b)
        if zeroed:
            bufs.update(zip(lslots, lbufs))
        for s in wanted:
            if s not in bufs and values[s] is not None:  # a freed slot is never needed (plan refuses it)
                b = bufs[s] = alloc(values[s].shape, T)
                export[s] = id(b)
        self.roots = np.fromiter(seeds, np.int64, len(seeds))
        self.witness = _WITNESS[T]
        self.tcode = 1 if T is _F64 else 0

    def backward(self, on, release):
        """The whole replay in one call: (status, where, need, left); with ``release`` the entries
        that ran are freed in it, and ``left`` (else -1) is for ``keep``. A large elementwise tape
        (interp.split_size) replays in ranges of its elements, one per thread."""
        threads = parallel.get_num_threads()
        status, where, need, left = _K.backward(self.R, self.RF, self.S, _HOFF, self.export, self.roots, on,
                                                self.tcode, self.witness, _K.OP_KERNEL, _K.SAVES, release,
                                                parallel.MIN_ELEMENTS if threads > 1 else 0)
        if status != _K.SPLIT:
            return status, where, need, left
        status, where = self._split(where, need, threads)
        if release and status == _K.OK:
            left = _K.free_entries(self.R, self.S, need, _K.SAVES)
        return status, where, need, left

    def _split(self, n, need, threads):
        """The backward of a tape whose rows are all elementwise over n values, in ``threads``
        ranges of them (whole blocks of the interpreter's): each range's replay reads views of
        the values and gradient buffers of n elements in place of the whole ones."""
        R, S, values = self.R, self.S, self.tape.values
        used = np.unique(R[need[R[:, 4]] == _K.RUN, 1:5])
        big = [s for s in used[used >= 0].tolist() if values[s].size == n]
        bufs = {id(b): b for b in (*self.bufs.values(), *self.lbufs)}
        step = -(-n // threads)
        step = -(-step // _K.BLOCK) * _K.BLOCK
        parts, views = [], []  # (views: held here, since the tables hold only their addresses)
        for lo in range(0, n, step):
            Sp, Ep = S.copy(), self.export.copy()
            for s in big:
                v = values[s].reshape(-1)[lo:lo + step]
                Sp[s, 0] = id(v)
                views.append(v)
                if Ep[s] != 0:
                    b = bufs[Ep[s]].reshape(-1)[lo:lo + step]
                    Ep[s] = id(b)
                    views.append(b)
            parts.append((Sp, Ep))
        results = parallel.run_each(lambda part: _K.replay_part(self.R, self.RF, part[0], _HOFF, part[1], self.roots,
                                                                need, self.tcode, self.witness, _K.OP_KERNEL), parts)
        return next((r for r in results if r[0] != _K.OK), (_K.OK, -1))

    def arena(self, need):
        """Lay out the gradients of the needed slots that are not exported, for ``replay``."""
        self.need = need
        self.goff, self.garena = _K.arena(self.S, _HOFF, need, self.export, self.witness)

    def replay(self, lo, hi, check_nan):
        """Replay rows hi-1 down to lo: (status, where, the input whose gradient was NaN)."""
        return _K.replay(self.R, self.RF, self.S, _HOFF, self.export, self.need, self.goff, self.garena, lo, hi,
                         self.tcode, self.witness, _K.OP_KERNEL, check_nan)

    def buffer(self, s):
        """Slot s's gradient buffer (a view into the arena unless exported)."""
        if s in self.bufs:
            return self.bufs[s]
        v = self.tape.values[s]
        o = self.goff[s]
        return self.garena[o: o + v.size].reshape(v.shape)

    def keep(self, left):
        _keep(self.tape, self.R, self.S, left)


class CpuEngine:
    """The interface of a device engine (``engine.driver`` describes it), on the CPU: the planner
    and its codes straight from the interpreter, a ``Pass`` per backward over one tape, and
    ``release``."""

    def __init__(self, interp):
        self.OK, self.ERR_FREED, self.ERR_NAN = interp.OK, interp.ERR_FREED, interp.ERR_NAN
        self.RUN, self.WANTED, self.LEADS = interp.RUN, interp.WANTED, interp.LEADS
        self.plan, self.leads = interp.plan, interp.leads

    EVERY = np.zeros(0, np.int8)  # plan's ``on`` when every input is wanted: nothing limits the walk

    start = Pass  # start(tape, seeds, lslots, wanted, zeroed): a Pass (a class, so it binds no self)

    def release(self, tape, need):
        """Free what a backward without retain_graph ran, as torch's engine releases each node's saved
        tensors once it has run: the entries that saved a value (interp.free_entries) and custom
        Functions' saved tensors; then keep only what the entries left unfreed read."""
        R = tape.row_table()[0]
        S = tape.raw_slots()
        _K.fill_slots(S, tape.synced, id(tape.values), _LIST_ITEMS, id(None), _HOFF, _TNOFF, _LUT)
        tape.synced = tape.ns
        if need.shape[0] < S.shape[0]:  # slots the create_graph VJPs added: not run by this backward
            need = np.concatenate([need, np.zeros(S.shape[0] - need.shape[0], np.int8)])
        for call in {id(c): c for c in tape.pyfuncs.values()}.values():
            if any(s >= 0 and need[s] == _K.RUN for s in call.out_slots):
                call.ctx._release()
        _keep(tape, R, S, _K.free_entries(R, S, need, _K.SAVES))


# The largest value (in bytes) a freed tape keeps whole where its shape would do: a stub costs
# about as much as that, and a chain's one-element values are kept at no cost per slot.
_SMALL = 64
_NO_SLOTS = np.zeros(0, np.int64)


def _keep(tape, R, S, left):
    """Close the tape, keeping for its ``left`` unfreed entries the values and shapes they read."""
    if not left:
        tape.free(None)
        return
    # what a custom Function not yet run saved, wherever it lives
    pinned = np.array([s for call in tape.pyfuncs.values() for s in call.ctx._saved_slots()], np.int64) \
        if tape.pyfuncs else _NO_SLOTS
    level, missing = _K.keep(R, S, _K.SAVES, pinned, id(tape.values), _LIST_ITEMS, id(None), _HOFF, _TNOFF, _SMALL,
                             _STUBS.table)
    for s in missing.tolist():
        stub = tape.values[s] = _STUBS.make(tape.values[s])
        S[s, 0] = id(stub)
    tape.free(level)


class _Stubs:
    """Stubs: arrays of a shape and dtype that hold no data (every stride 0, over one element),
    what a freed tape keeps where its adjoints read a shape only. One per shape and dtype, shared
    by every tape (a training loop's freed tapes hold no stub of their own), found by the jitted
    ``interp.keep`` in ``table`` (their addresses, by shape and dtype)."""
    _DATA = np.zeros(16, np.uint8)
    _DATA.flags.writeable = False

    def __init__(self):
        self.table = np.zeros(4096, np.int64)
        self.stubs = {}  # address -> stub (keeps it alive while the table names it)

    def make(self, v):
        i = _K.find_stub(self.table, id(v), _HOFF, _TNOFF)
        if i >= 0:
            return self.stubs[i]
        if len(self.stubs) * 2 >= self.table.shape[0]:  # ever-new shapes stay bounded
            self.table[:] = 0
            self.stubs.clear()
            i = _K.find_stub(self.table, id(v), _HOFF, _TNOFF)
        stub = np.ndarray(v.shape, v.dtype, self._DATA, 0, (0,) * v.ndim)
        self.table[-1 - i] = id(stub)
        self.stubs[id(stub)] = stub
        return stub


_STUBS = _Stubs()
