"""Ray itself: starting a local instance or joining a cluster, and every private Ray API the project uses,
in one module."""
