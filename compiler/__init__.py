"""The cnnc compiler: parse, elaborate, shape-check and cost ``.cnn`` specs (no Numba here)."""
