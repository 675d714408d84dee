"""Empirical privacy audit of a simulated run: canaries, one-run lower bound on ε, exposure, report."""
