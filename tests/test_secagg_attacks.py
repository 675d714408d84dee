"""A malicious coordinator and malicious nodes against SecAgg+ (``pytest -m adversarial``).

Real node sessions (tests/secagg_round.py); the test overrides one coordinator step, or edits
what one node sends, and checks that the honest nodes refuse with a clear reason - before they
reveal any share - or that the coordinator's checks catch and attribute a bad node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pytest

from fedtune.common.secagg.crypto import KeyPair, SecAggError, signing_public_key
from fedtune.common.secagg.protocol import BadShares, ClientSession
from fedtune.common.secagg.round import Advert

from secagg_round import Round, inputs, name, total_of

pytestmark = pytest.mark.adversarial
TARGET = 1


def _shares_of_target(rnd: Round) -> dict[str, int]:
    """How many shares of the target's self-mask seed (b) and of its mask key (s) the coordinator got."""
    kinds = [rv[TARGET][0] for rv in rnd.reveals.values() if TARGET in rv]
    return {"b": kinds.count("b"), "s": kinds.count("s")}


@pytest.mark.parametrize("n", [3, 4, 8])
def test_the_one_round_unmask_attack_recovers_nothing(n):
    """The attack that broke the old protocol in one round: each node m is told survivors = {m, target},
    the target {target}, so every node would reveal both the target's b and its neighbours' keys."""
    class Split(Round):
        def confirm_request(self, i, survivors):
            return [i] if i == TARGET else sorted({i, TARGET})

    rnd = Split(n=n, min_peers=1, min_threshold=1)  # the node's own minimums at their weakest
    with pytest.raises(SecAggError):
        rnd.run(inputs(n))
    assert rnd.reveals == {}  # no node revealed a single share
    assert set(rnd.refused) == set(range(1, n + 1))
    assert all("survivor" in why for why in rnd.refused.values())


def test_two_survivor_sets_cannot_both_reach_a_quorum():
    """A subtler split: half the nodes confirm 'everyone', half 'everyone but the target', each half
    shown its own half's signatures.  Neither gets a strict majority, so nobody reveals."""
    class TwoViews(Round):
        def confirm_request(self, i, survivors):
            return sorted(survivors) if i <= 4 else sorted(survivors - {TARGET})

        def unmask_request(self, i, signatures):
            return {j: s for j, s in signatures.items() if j != i and (j <= 4) == (i <= 4)}

    rnd = TwoViews(n=8)
    with pytest.raises(SecAggError):
        rnd.run(inputs(8))
    assert _shares_of_target(rnd) == {"b": 0, "s": 0}
    assert all("confirmed this survivor set" in why or "not a survivor" in why for why in rnd.refused.values())


def test_one_node_shown_another_survivor_set_makes_every_node_refuse_to_unmask():
    class Mixed(Round):  # node 8 is told a set without the target; signatures are relayed as usual
        def confirm_request(self, i, survivors):
            return sorted(survivors - {TARGET}) if i == 8 else sorted(survivors)

    rnd = Mixed(n=8)
    with pytest.raises(SecAggError):
        rnd.run(inputs(8))
    assert rnd.reveals == {} and len(rnd.refused) == 8
    assert all("'node-08' signed a different view" in why for i, why in rnd.refused.items() if i != 8)
    assert "not a survivor" in rnd.refused[8]


def test_a_substituted_public_key_is_refused_by_every_node():
    class ManInTheMiddle(Round):
        def share_request(self, i, adverts, setup):
            mine = KeyPair.generate()  # the coordinator's own key in place of node-03's
            forged = [dataclasses.replace(a, c_public=mine.public) if a.name == name(3) else a for a in adverts]
            return forged, setup.threshold, setup.graph_to_config()

    rnd = ManInTheMiddle()
    with pytest.raises(SecAggError):
        rnd.run(inputs())
    assert rnd.reveals == {} and len(rnd.refused) == 8
    assert all("not signed by the key the roster lists" in why for why in rnd.refused.values())


def test_a_sybil_node_not_on_the_roster_is_refused():
    class Sybils(Round):
        def share_request(self, i, adverts, setup):
            key = os.urandom(32)
            sybil = Advert("node-99", self.params, KeyPair.generate().public, KeyPair.generate().public, 1.0,
                           bytes(32)).signed(key)
            return [*adverts, sybil], setup.threshold, setup.graph_to_config()

    rnd = Sybils(n=4)
    with pytest.raises(SecAggError):
        rnd.run(inputs(4))
    assert all("not on this node's roster" in why for why in rnd.refused.values()) and len(rnd.refused) == 4


@pytest.mark.parametrize("threshold", [1, 2])
def test_a_low_threshold_is_refused(threshold):
    class LowThreshold(Round):
        def share_request(self, i, adverts, setup):
            return adverts, threshold, dataclasses.replace(setup, threshold=threshold).graph_to_config()

    rnd = LowThreshold(n=8)  # k = 7: a strict majority is 4
    with pytest.raises(SecAggError):
        rnd.run(inputs())
    assert len(rnd.refused) == 8 and all("strict majority" in why for why in rnd.refused.values())


def test_a_one_neighbour_graph_is_refused():
    class OneNeighbour(Round):
        def share_request(self, i, adverts, setup):
            ring = {j: [j % 8 + 1] for j in range(1, 9)}
            return adverts, setup.threshold, dataclasses.replace(setup, neighbours=ring).graph_to_config()

    rnd = OneNeighbour()
    with pytest.raises(SecAggError):
        rnd.run(inputs())
    assert len(rnd.refused) == 8 and all("neighbour graph" in why for why in rnd.refused.values())


@pytest.mark.parametrize("field,value,reason", [
    ("model_hash", hashlib.sha256(b"crafted adapter").digest(), "different global adapter"),
    ("clip", 50.0, "different clip bound"),
    ("max_weight", 1e9, "different weight cap"),
])
def test_different_models_or_round_parameters_for_one_node_are_noticed_by_everyone(field, value, reason):
    """Model inconsistency (Pasquini et al., CCS'22): the target trains from another adapter (or under
    other parameters) than everyone else; every node sees the signed difference before sharing a key."""
    rnd = Round()
    target = rnd.sessions[TARGET]
    rnd.sessions[TARGET] = ClientSession(target.trust, dataclasses.replace(rnd.params, **{field: value}), 1.0)
    with pytest.raises(SecAggError):
        rnd.run(inputs())
    assert rnd.reveals == {} and len(rnd.refused) == 8
    assert all(reason in why and why.startswith("share") for why in rnd.refused.values())


def test_too_few_peers_are_refused():
    with pytest.raises(SecAggError):
        (rnd := Round(n=2)).run(inputs(2))
    assert all("at least 3 (node config min-peers)" in why for why in rnd.refused.values())
    picky = Round(n=4, min_peers=5)
    with pytest.raises(SecAggError):
        picky.run(inputs(4))
    assert len(picky.refused) == 4


def test_a_node_that_drops_below_the_crowd_after_masking_gets_no_reveal():
    rnd = Round(n=4)  # quorum 3 = min-peers 3: two dropouts after masking leave too few to hide in
    with pytest.raises(SecAggError):
        rnd.run(inputs(4), {2: "mask", 3: "mask"})
    assert rnd.reveals == {}


def test_a_second_survivor_set_is_never_signed():
    rnd = Round(n=4)
    rnd.run(inputs(4))
    session = rnd.sessions[1]
    with pytest.raises(SecAggError, match="second, different survivor set"):
        session.confirm([1, 2, 3])


def test_an_inflated_weight_is_refused_by_the_honest_nodes():
    class Inflating(Round):  # node-02 claims 1e12 (signed with its own, valid key)
        def share_request(self, i, adverts, setup):
            swollen = [dataclasses.replace(a, weight=1e12).signed(self.signing[a.name]) if a.name == name(2) else a
                       for a in adverts]
            return swollen, setup.threshold, setup.graph_to_config()

    rnd = Inflating(n=4)
    with pytest.raises(SecAggError):
        rnd.run(inputs(4))
    assert all("claims weight 1e+12" in why for i, why in rnd.refused.items() if i != 2)
    with pytest.raises(SecAggError, match="cap"):
        ClientSession(rnd.sessions[2].trust, rnd.params, 1e12).advertise()


def test_a_bad_share_is_detected_and_attributed_to_the_node_that_revealed_it():
    class Liar(Round):
        def run(self, vectors, drop=None):
            original = self.sessions[5].unmask

            def lying(signatures):
                out = original(signatures)
                kind, share = out[TARGET]
                out[TARGET] = (kind, bytes(b ^ 0xFF for b in share))
                return out

            self.sessions[5].unmask = lying
            return super().run(vectors, drop)

    with pytest.raises(BadShares) as err:
        Liar().run(inputs())
    assert err.value.culprits == {5} and "node-01" in str(err.value)


def test_the_honest_round_still_sums_exactly_with_every_check_on():
    x = inputs()
    rnd = Round()
    total, survivors, _ = rnd.run(x, {2: "confirm", 7: "unmask"})
    assert rnd.refused == {} and np.array_equal(total, total_of(x, survivors)) and survivors == set(x)
    assert signing_public_key(rnd.signing[name(1)]) == rnd.roster.key_of(name(1))


def test_under_ffa_lora_a_coordinator_that_changes_one_node_s_frozen_a_is_noticed():
    """lora.freeze-a sends only B deltas, but A still shapes what B learns: a coordinator that hands one node
    another A (e.g. zeros, to silence everyone but a target - Pasquini et al.) must change that node's signed
    adapter hash, so the consistency check sees it. A hash over the trained part only would not."""
    from flwr.app import RecordDict

    from fedtune.common.secagg.protocol import Trust
    from fedtune.common.secagg.roster import SimulatedRoster, simulated_signing_key
    from fedtune.common.secagg.round import RoundParams
    from fedtune.node import secagg as node_secagg

    names = ["m.lora_A.weight", "m.lora_B.weight"]
    honest = {names[0]: np.ones((2, 3), np.float32), names[1]: np.zeros((3, 2), np.float32)}
    forged = {names[0]: np.zeros((2, 3), np.float32), names[1]: honest[names[1]]}
    update = {names[1]: np.full((3, 2), 0.1, np.float32)}  # only B travels
    trust = Trust("hospital-0", simulated_signing_key("hospital-0"), SimulatedRoster())
    hashes = []
    for received in (honest, forged):
        state = RecordDict()
        node_secagg.start(state, trust, 7, 1, received, update, 10.0, 1.0, 100.0, freeze_a=True)
        params = RoundParams.unpack(state[node_secagg._SESSION]["params"])
        assert params.length == update[names[1]].size + 1  # the masked vector is the B delta (+ weight)
        hashes.append(params.model_hash)
    assert hashes[0] != hashes[1]
    with pytest.raises(Exception, match="adapter names differ"):  # an A delta is never masked under freeze-a
        node_secagg.start(RecordDict(), trust, 7, 1, honest, {**update, names[0]: honest[names[0]]}, 10.0, 1.0,
                          100.0, freeze_a=True)
