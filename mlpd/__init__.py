"""mlpd: a single-node, batteries-included ML platform daemon for one GPU box."""

__version__ = "0.1.0"
