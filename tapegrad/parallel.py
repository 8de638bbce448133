"""Intra-op threads, as torch.get_num_threads / set_num_threads: a compiled replay splits its large
elementwise runs into chunks, and a backward whose rows are all elementwise over many values splits
their range, on this many threads (the jitted kernels release the GIL). The worker threads start on
first use, never at import."""
import os
import threading

MIN_ELEMENTS = 1 << 16  # fewer values sit in cache, and threads cost more than they save

_lock = threading.Lock()
_threads = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)]
_pool = [None, 0]  # (executor, its worker count)


def get_num_threads():
    """The number of threads that large elementwise work is spread over."""
    return _threads[0]


def set_num_threads(n):
    if not isinstance(n, int):
        raise TypeError(f"set_num_threads(): argument 'int' must be int, not {type(n).__name__}")
    if n < 1:
        raise RuntimeError("set_num_threads expects a positive integer")
    _threads[0] = n


def run_each(fn, items):
    """fn(item) for every item, spread over get_num_threads() threads in contiguous groups (the
    calling thread takes the first); returns the results in order."""
    k = min(_threads[0], len(items))
    if k <= 1:
        return [fn(x) for x in items]
    step = -(-len(items) // k)
    groups = [items[i:i + step] for i in range(0, len(items), step)]
    pool = _executor(len(groups) - 1)
    futures = [pool.submit(lambda g=g: [fn(x) for x in g]) for g in groups[1:]]
    out = [fn(x) for x in groups[0]]
    for f in futures:
        out.extend(f.result())
    return out


def _executor(workers):
    from concurrent.futures import ThreadPoolExecutor
    with _lock:
        pool, have = _pool
        if pool is None or have < workers:
            if pool is not None:
                pool.shutdown(wait=False)
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tapegrad")
            _pool[:] = [pool, workers]
        return pool
