"""A node's record-level differential privacy: Opacus DP-SGD, accounting, ledger, budget."""

import logging as _logging

# Opacus calls logging.basicConfig() at import, adding a root handler that prints every Flower
# log line a second time; keep the root logger as it was.
_before = list(_logging.getLogger().handlers)
import opacus.utils.module_utils  # noqa: E402,F401

for _h in list(_logging.getLogger().handlers):
    if _h not in _before:
        _logging.getLogger().removeHandler(_h)

from fedtune.node.privacy.accounting import default_delta, epsilon, noise_for_target
from fedtune.node.privacy.dp_sgd import DPPlan, DPStepper, poisson_sample_rate
from fedtune.node.privacy.guard import RoundPrivacy, plan_round
from fedtune.node.privacy.ledger import LedgerError, PrivacyLedger, dataset_fingerprint

__all__ = [
    "DPPlan", "DPStepper", "LedgerError", "PrivacyLedger", "RoundPrivacy", "dataset_fingerprint", "default_delta",
    "epsilon", "noise_for_target", "plan_round", "poisson_sample_rate",
]
