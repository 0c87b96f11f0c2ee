"""Component deploys (``@deploy``): install, database, configure;
called by ``deploys/synapse.py``."""
