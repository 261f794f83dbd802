"""The export pod's server: a cluster job's published policy versions, read from its checkpoint volume."""
