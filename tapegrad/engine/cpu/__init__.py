"""The jitted CPU engine, imported on the first backward (Numba's import and compilation stay out
of ``import tapegrad``): ``interp`` replays a tape through the adjoints, which read and write
through ``context``. It imports nothing above the op table's floor: what it needs from the table
is generated (_generated.py)."""
