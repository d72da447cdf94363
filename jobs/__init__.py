"""Jobs that drive the engine: folder runs, sweeps, the Dask cluster, progress and plots."""
