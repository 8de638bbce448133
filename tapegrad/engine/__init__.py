"""Backward over recorded tapes: ``driver`` (device-free: linked tapes, hooks, delivery) runs
each tape on a device engine (``cpu_replay`` over the jitted ``cpu``, which loads Numba on the
first backward) or, with create_graph, through the differentiable walk (``create_graph``)."""
