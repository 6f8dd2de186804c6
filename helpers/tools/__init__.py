"""Command-line tools around the science: the batch runner, the distributed precompute, the regression
checks, reports, the static site, the kernel matrix and the GPU check.  See :mod:`helpers` for the map."""
