"""Serving registered models: deployments and their revisions (deployments.py), the model files a
replica serves (models.py), the rollout plans (rollout.py) and the worker's reconcile pass
(reconcile.py). The replica itself is a workload kind (mlpd/kinds/deployment.py).

May import: the top-level core, scheduling/, runtime/, tracking/. Not kinds/ (except through the
kind registry), web/ or workers/.
"""
