"""fedtune.common.metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from fedtune.common.metrics import (
    LabelCounts,
    exact_match,
    match_label,
    normalize_answer,
    perplexity,
    rouge_l,
)

LABELS = ["cardiology", "neurology", "oncology"]


# --- normalization / exact match -------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Cardiology.", "cardiology"),  # lowercase, drop "the", drop ".", collapse spaces
        ("an apple, a day", "apple day"),  # articles a/an removed, comma removed
        ("\uff23\uff21\uff34", "cat"),  # full-width "ＣＡＴ" -> NFKC "CAT" -> "cat"
        ("  theory  ", "theory"),  # "the" only as a whole word
        ("«Héllo»—world!", "hélloworld"),  # Unicode P* (Pi, Pf, Pd, Po) deleted, accents kept
        ("", ""),
        ("A", "a"),  # an answer that is only an article keeps it (multiple-choice labels)
        ("(B).", "b"),
        ("An", "an"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("The Cardiology!", "cardiology")
    assert exact_match("  NEUROLOGY ", "neurology.")
    assert not exact_match("cardiology", "neurology")
    assert not exact_match("cardiology unit", "cardiology")


def test_multiple_choice_labels_a_to_d_are_scored_as_distinct_labels():
    """Stripping articles used to turn the label "A" into "", so "A" matched nothing and an empty answer
    matched "A"."""
    labels = ["A", "B", "C", "D"]
    assert match_label("A", labels) == "A" and match_label("a.", labels) == "A" and match_label("", labels) is None
    assert not exact_match("", "A") and exact_match("(A)", "A") and not exact_match("A", "B")
    counts = LabelCounts.from_predictions(["A", "B", "A", "D"], ["A", "B", "", "C"], labels)
    assert counts.tp == [1, 1, 0, 0] and counts.fn == [1, 0, 0, 1] and counts.fp == [0, 0, 1, 0]


# --- ROUGE-L ---------------------------------------------------------------------------


def test_rouge_l_equal_lengths():
    # normalized: "cat sat on mat" vs "cat is on mat"; LCS = "cat on mat" = 3
    # P = 3/4, R = 3/4, F1 = 2*(9/16)/(6/4) = 3/4
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)


def test_rouge_l_different_lengths():
    # pred "patient has severe chest pain" (5 tokens), ref "severe pain in chest" (4 tokens)
    # LCS = 2 ("severe chest" or "severe pain"); P = 2/5, R = 2/4
    # F1 = 2 * (2/5)(1/2) / (2/5 + 1/2) = (2/5) / (9/10) = 4/9
    assert rouge_l("Patient has severe chest pain", "severe pain in chest") == pytest.approx(4 / 9)
    # pred "cat sat" (2), ref "cat sat on mat" (4): LCS = 2, P = 1, R = 1/2, F1 = 1/(3/2) = 2/3
    assert rouge_l("cat sat", "The cat sat on a mat.") == pytest.approx(2 / 3)


def test_rouge_l_edge_cases():
    assert rouge_l("", "") == 1.0
    assert rouge_l("!", "...") == 1.0  # both normalize to empty
    assert rouge_l("the", "a.") == 0.0  # an answer that is only an article keeps it
    assert rouge_l("", "cardiology") == 0.0
    assert rouge_l("cardiology", "") == 0.0
    assert rouge_l("cardiology", "neurology") == 0.0  # LCS = 0
    assert rouge_l("Cardiology.", "cardiology") == 1.0


# --- labels / macro-F1 -----------------------------------------------------------------


def test_match_label():
    assert match_label("Cardiology.", LABELS) == "cardiology"
    assert match_label("  the NEUROLOGY!! ", LABELS) == "neurology"
    assert match_label("I don't know", LABELS) is None  # invalid answer
    assert match_label("oncology ward", LABELS) is None  # must match whole answer


REFS = ["cardiology", "cardiology", "neurology", "oncology", "oncology", "neurology"]
PREDS = ["Cardiology.", "neurology", "neurology", "I don't know", "ONCOLOGY", "cardiology!"]
# row by row (gold -> pred):
#   card -> card : tp[card]
#   card -> neuro: fn[card], fp[neuro]
#   neuro-> neuro: tp[neuro]
#   onc  -> invalid: fn[onc] only
#   onc  -> onc  : tp[onc]
#   neuro-> card : fn[neuro], fp[card]
# tp = [1, 1, 1], fp = [1, 1, 0], fn = [1, 1, 1]
# F1: card 2/(2+1+1) = 1/2, neuro 2/(2+1+1) = 1/2, onc 2/(2+0+1) = 2/3
# macro = (1/2 + 1/2 + 2/3) / 3 = (5/3) / 3 = 5/9


def test_label_counts_small_example():
    counts = LabelCounts.from_predictions(REFS, PREDS, LABELS)
    assert counts.tp == [1, 1, 1]
    assert counts.fp == [1, 1, 0]
    assert counts.fn == [1, 1, 1]
    assert counts.f1() == pytest.approx([1 / 2, 1 / 2, 2 / 3])
    assert counts.macro_f1() == pytest.approx(5 / 9)


def test_label_counts_sum_of_halves_equals_whole():
    whole = LabelCounts.from_predictions(REFS, PREDS, LABELS)
    first = LabelCounts.from_predictions(REFS[:3], PREDS[:3], LABELS)
    second = LabelCounts.from_predictions(REFS[3:], PREDS[3:], LABELS)
    assert first + second == whole
    assert LabelCounts.zeros(3) + whole == whole
    # first half: tp=[1,1,0] fp=[0,1,0] fn=[1,0,0]
    # -> F1 card 2/(2+0+1) = 2/3, neuro 2/(2+1+0) = 2/3, onc None
    # -> macro over the two present labels = 2/3, not the pooled 5/9 (why counts are summed)
    assert first.macro_f1() == pytest.approx(2 / 3)


def test_label_absent_everywhere_is_excluded_from_macro():
    counts = LabelCounts.from_predictions(REFS, PREDS, LABELS + ["dermatology"])
    assert counts.tp == [1, 1, 1, 0] and counts.fp == [1, 1, 0, 0] and counts.fn == [1, 1, 1, 0]
    assert counts.f1()[3] is None
    assert counts.macro_f1() == pytest.approx(5 / 9)  # same as without the unused label


def test_label_predicted_but_never_gold_scores_zero():
    # gold card, pred derm: fn[card]=1, fp[derm]=1 -> F1 card 0/1 = 0, derm 0/1 = 0; macro 0
    labels = ["cardiology", "dermatology"]
    counts = LabelCounts.from_predictions(["cardiology"], ["dermatology"], labels)
    assert counts.f1() == [0.0, 0.0]
    assert counts.macro_f1() == 0.0


def test_all_labels_unused_macro_is_none():
    assert LabelCounts.zeros(2).f1() == [None, None]
    assert LabelCounts.zeros(2).macro_f1() is None
    assert LabelCounts.from_predictions([], [], LABELS).macro_f1() is None


def test_unknown_reference_raises():
    with pytest.raises(ValueError, match="pediatrics"):
        LabelCounts.from_predictions(["pediatrics"], ["cardiology"], LABELS)


def test_label_counts_errors():
    with pytest.raises(ValueError):
        LabelCounts.zeros(2) + LabelCounts.zeros(3)
    with pytest.raises(ValueError):
        LabelCounts.from_predictions(["cardiology"], [], LABELS)  # length mismatch
    with pytest.raises(ValueError):
        LabelCounts.from_predictions([], [], ["Oncology", "the oncology."])  # ambiguous labels


# --- perplexity ------------------------------------------------------------------------


def test_perplexity():
    # exp(2*ln 3 / 2) = exp(ln 3) = 3
    assert perplexity(2 * math.log(3), 2) == pytest.approx(3.0)
    assert perplexity(0.0, 5) == 1.0  # exp(0)


def test_perplexity_errors_and_overflow():
    with pytest.raises(ValueError):
        perplexity(1.0, 0)
    with pytest.raises(ValueError):
        perplexity(1.0, -3)
    assert perplexity(1e6, 1) == float("inf")  # exp(1e6) overflows a double
