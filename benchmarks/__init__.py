"""Benchmarks of raft_actors, run from Python or the command line; each returns a pandas DataFrame."""
