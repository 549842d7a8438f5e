"""Reward-augmented relabelling (jaxpref.data.relabel), checked row by row against hand-written expectations."""

import pytest

from jaxpref.data import DataError, PreferenceDataset
from jaxpref.data.relabel import (
    DEFAULT_GOAL_TEMPLATE,
    condition_prompt,
    condition_rows,
    format_score,
    render_goal,
    reward_augment,
)

PAPER_8 = ("You are an assistant that generates responses for the instruction while implicitly achieving the "
           "following target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\nOverall score: 8.")


def _rows():
    return PreferenceDataset([
        {"id": "a", "prompt": "Q1", "chosen": " good", "rejected": " bad", "score_chosen": 8.0, "score_rejected": 3},
        {"id": "b", "prompt": "Q2", "chosen": " fine", "rejected": " meh", "score_chosen": 8.5, "score_rejected": 7.25},
    ])


def test_score_formatting():
    assert format_score(8.0) == "8" and format_score(8) == "8"
    assert format_score(8.5) == "8.5" and format_score(7.25) == "7.25" and format_score(10) == "10"
    with pytest.raises(ValueError):
        format_score(float("nan"))


def test_template_is_the_papers_wording():
    assert render_goal(8.0) == PAPER_8
    assert render_goal(8.5).endswith("Overall score: 8.5.")
    assert render_goal(3, "goal={score} of {min}..{max}", (0, 5)) == "goal=3 of 0..5"
    assert "{score}" in DEFAULT_GOAL_TEMPLATE


def test_two_rows_per_pair_and_the_swap():
    out = reward_augment(_rows())
    assert [r["id"] for r in out] == ["a/w", "a/l", "b/w", "b/l"]
    aw, al, bw, bl = out
    # goal = score of the chosen: unchanged direction
    assert (aw["chosen"], aw["rejected"], aw["goal"]) == (" good", " bad", 8.0)
    assert aw["prompt"] == PAPER_8 + "\n\nQ1"
    # goal = score of the rejected: the rejected response matches the goal and wins
    assert (al["chosen"], al["rejected"], al["goal"]) == (" bad", " good", 3.0)
    assert al["prompt"].endswith("Overall score: 3.\n\nQ1")
    assert (al["score_chosen"], al["score_rejected"]) == (3.0, 8.0)
    assert bw["prompt"].endswith("Overall score: 8.5.\n\nQ2") and bl["prompt"].endswith("Overall score: 7.25.\n\nQ2")
    assert (bl["chosen"], bl["rejected"]) == (" meh", " fine")
    assert all(r["source_id"] in ("a", "b") for r in out)
    # the input rows are untouched
    assert _rows()[0] == dict(_rows()[0]) and _rows()[0]["prompt"] == "Q1"


def test_one_half_of_the_relabelled_pairs_as_a_control():
    """``pairs="goal_chosen"``: only the goal = r_w pairs, original order; ``"goal_rejected"``: only the swapped ones."""
    w = reward_augment(_rows(), pairs="goal_chosen")
    assert [(r["id"], r["chosen"], r["rejected"], r["goal"]) for r in w] == [
        ("a/w", " good", " bad", 8.0), ("b/w", " fine", " meh", 8.5)]
    lo = reward_augment(_rows(), pairs="goal_rejected")
    assert [(r["id"], r["chosen"], r["rejected"], r["goal"]) for r in lo] == [
        ("a/l", " bad", " good", 3.0), ("b/l", " meh", " fine", 7.25)]
    assert lo[0]["prompt"].endswith("Overall score: 3.\n\nQ1")
    with pytest.raises(ValueError, match="pairs must be"):
        reward_augment(_rows(), pairs="half")


def test_conversational_system_role_and_first_user_turn():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "Q"}]
    with_sys = condition_prompt(msgs, "GOAL", system_role=True)
    assert with_sys[0] == {"role": "system", "content": "GOAL"} and with_sys[1:] == msgs
    no_sys = condition_prompt(msgs, "GOAL", system_role=False)
    assert no_sys[0]["content"] == "GOAL\n\nhi" and no_sys[2]["content"] == "Q"
    existing = condition_prompt([{"role": "system", "content": "Be nice."}] + msgs, "GOAL", system_role=True)
    assert existing[0] == {"role": "system", "content": "GOAL\n\nBe nice."} and len(existing) == 4
    assert msgs[0]["content"] == "hi"  # not modified in place


def test_ties_keep_drop_error():
    rows = PreferenceDataset([{"id": "t", "prompt": "Q", "chosen": " x", "rejected": " y", "score_chosen": 5,
                               "score_rejected": 5}] + list(_rows()))
    kept = reward_augment(rows, ties="keep")
    assert [r["id"] for r in kept][:2] == ["t/w", "t/l"]
    # the two tie pairs share a prompt and contradict each other
    assert kept[0]["prompt"] == kept[1]["prompt"] and kept[0]["chosen"] == kept[1]["rejected"]
    assert [r["id"] for r in reward_augment(rows, ties="drop")] == ["a/w", "a/l", "b/w", "b/l"]
    with pytest.raises(DataError, match="'t'.*equal scores"):
        reward_augment(rows, ties="error")
    with pytest.raises(ValueError, match="ties"):
        reward_augment(rows, ties="maybe")


def test_half_is_a_seeded_half():
    rows = PreferenceDataset([{"id": str(i), "prompt": "Q", "chosen": " x", "rejected": " y", "score_chosen": 9,
                               "score_rejected": 2} for i in range(50)])
    a = [r["id"] for r in reward_augment(rows, half=True, seed=3)]
    b = [r["id"] for r in reward_augment(rows, half=True, seed=3)]
    c = [r["id"] for r in reward_augment(rows, half=True, seed=4)]
    assert a == b and a != c and len(a) == 50 and len(set(a)) == 50
    full = [r["id"] for r in reward_augment(rows)]
    assert [i for i in full if i in set(a)] == a  # a subset, in the original order


@pytest.mark.parametrize("bad, match", [
    ({"score_rejected": None}, "no 'score_rejected'"),
    ({"score_chosen": "great"}, "not a number"),
    ({"score_chosen": 11}, "outside the score scale"),
    ({"score_rejected": 0.5}, "outside the score scale"),
    ({"score_chosen": float("nan")}, "outside the score scale"),
])
def test_bad_scores_raise_naming_the_row(bad, match):
    row = {"id": "row7", "prompt": "Q", "chosen": " x", "rejected": " y", "score_chosen": 8, "score_rejected": 3}
    row.update(bad)
    if bad.get("score_rejected", 1) is None:
        del row["score_rejected"]
    with pytest.raises(DataError, match=f"row7.*{match}|{match}.*row7|'row7'"):
        reward_augment([row])


def test_condition_rows_keeps_labels():
    out = condition_rows(_rows(), 10)
    assert [r["chosen"] for r in out] == [" good", " fine"]
    assert all(r["prompt"].startswith(render_goal(10)) and r["goal"] == 10 for r in out)


def test_custom_render_for_goal_tokens():
    out = reward_augment(_rows()[:1], render=lambda s: str(31 + int(s)))
    assert out[0]["prompt"] == "39\n\nQ1" and out[1]["prompt"] == "34\n\nQ1"
