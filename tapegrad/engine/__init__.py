"""The engines that replay a tape backward: ``cpu`` (Numba, imported on the first backward)."""
