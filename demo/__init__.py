"""A stand-in for the lab: a simulated IT population, a virtual rig, and ``itloop demo``."""
