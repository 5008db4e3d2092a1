"""The base: typed parameters, errors, atomic files, locks, processes, devices and figures."""
