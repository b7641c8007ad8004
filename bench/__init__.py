"""nbflow benchmarks: `python -m bench --help`."""
