"""The embedded MLflow: the tracking server's process and store (server.py) and mlpd's ownership
rules over MLflow's API (policy.py).

May import: the top-level core. Not kinds/, scheduling/, serving/, web/ or workers/.
"""
