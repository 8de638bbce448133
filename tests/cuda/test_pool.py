"""The caching device allocator: its bookkeeping everywhere, the plugin itself on a real GPU."""
import numpy as np
import pytest

from tapegrad.cuda.pool import FreeLists


def test_a_freed_block_is_reused_by_a_request_of_its_rounded_size_only():
    cache = FreeLists()
    n, p = cache.take(1000)
    assert (n, p) == (1024, None)
    cache.give(n, "block")
    assert cache.take(2000) == (2048, None)  # another size: not that block
    assert cache.take(1) == (512, None)
    assert cache.take(1024) == (1024, "block")
    assert cache.take(1024) == (1024, None)  # taken: a block has one owner at a time
    assert cache.reused == 1


def test_drain_gives_up_every_cached_block_once():
    cache = FreeLists()
    for n, p in ((512, "a"), (512, "b"), (4096, "c")):
        cache.give(n, p)
    assert sorted(cache.drain()) == ["a", "b", "c"]
    assert cache.drain() == [] and cache.take(512) == (512, None)


@pytest.mark.gpu_only
def test_a_training_loop_allocates_nothing_after_its_first_steps():
    import tapegrad as tg
    from tapegrad.cuda import pool, runtime
    mm = pool.current(runtime())
    assert mm is not None, "the caching allocator is not installed"
    rng = np.random.default_rng(0)
    model = tg.nn.Sequential(tg.nn.Linear(16, 32), tg.nn.Tanh(), tg.nn.Linear(32, 1)).cuda()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    x, y = (tg.tensor(rng.standard_normal(s).astype(np.float32), device="cuda") for s in ((64, 16), (64, 1)))
    losses = []
    for step in range(8):
        if step == 3:
            allocated = mm.cache.allocated
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert mm.cache.allocated == allocated
    assert losses[-1] < losses[0]


@pytest.mark.gpu_only
def test_live_arrays_never_share_a_block_and_a_reused_one_holds_its_new_values():
    import gc

    from tapegrad.cuda import array, pool, runtime
    mm = pool.current(runtime())
    live = [array.full((100,), np.float64, k) for k in range(20)]
    pointers = {v.d.__cuda_array_interface__["data"][0] for v in live}
    assert len(pointers) == 20
    del live
    gc.collect()
    reused = mm.cache.reused
    again = [array.full((100,), np.float64, -k) for k in range(20)]
    assert mm.cache.reused >= reused + 20
    for k, v in enumerate(again):
        np.testing.assert_array_equal(v.get(), np.full(100, -k, np.float64))
    import tapegrad as tg
    tg.cuda.empty_cache()
    assert all(not free for free in mm.cache.lists.values())
    np.testing.assert_array_equal(array.full((7,), np.float32, 3).get(), np.full(7, 3, np.float32))


@pytest.mark.gpu_only
def test_a_view_keeps_its_block_after_the_array_it_was_cut_from_dies():
    """The backward's arena is cut into one view a gradient and then dropped: its block must not
    return to the cache while a view is alive."""
    import gc

    from tapegrad.cuda import array, pool, runtime
    mm = pool.current(runtime())
    base = array.full((256,), np.float64, 7.0)
    view = base.d[128:256]
    del base
    gc.collect()
    start = view.__cuda_array_interface__["data"][0] - 128 * 8
    assert start not in {int(p) for free in mm.cache.lists.values() for p in free}
    others = [array.full((256,), np.float64, -1.0) for _ in range(8)]
    np.testing.assert_array_equal(view.copy_to_host(), np.full(128, 7.0))
    del view, others


def test_install_leaves_a_numba_cuda_without_a_manager_slot_on_its_own_manager():
    """(The simulator's driver has no manager slot, as a numba-cuda that moved it would not.)"""
    from tapegrad.cuda import pool

    class Cuda:
        def set_memory_manager(self, cls):
            raise AssertionError("installed without a manager slot")

    pool.install(Cuda())
