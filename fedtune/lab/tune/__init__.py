"""Hyperparameter search over federated simulations (``fedtune tune``), with Optuna.

``space.py`` reads and checks a preset's ``[tune]`` table; ``trial.py`` runs one trial (a Flower
simulation) and reports its rounds to the study; ``study.py`` drives the study and its storage;
``results.py`` writes the report, plots and ``best.toml``.
"""
