"""The pass engine: map a pure per-chunk kernel over a source and reduce it, in-process or on Dask."""
