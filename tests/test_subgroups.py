"""Subgroup accuracy on predictions built to be right in one subgroup and wrong in another."""

import numpy as np
import pytest

from fgmask_jax.evaluation import subgroups

AGE_NAMES = ("<=10", "11-20", "21-40", ">40")


def _constructed():
    """60 images of 12 persons (5 each). Persons 0-5 are in age group 3 (">40") and always
    answered right; persons 6-11 in age group 0 ("<=10") and always wrong. Gender: the
    even persons are female (1); mask kind alternates per image, as strings."""
    person = np.repeat(np.arange(12), 5)
    age_group = np.where(person < 6, 3, 0)
    gender_label = person % 2
    rng = np.random.default_rng(0)
    expression = rng.integers(0, 3, 60)
    right = person < 6
    labels = {"gender": gender_label, "expression": expression}
    preds = {"gender": np.where(right, gender_label, 1 - gender_label),
             "expression": np.where(right, expression, (expression + 1) % 3)}
    mask_kind = np.array(["cloth", "surgical"] * 30)
    return labels, preds, person, {"age_group": age_group, "gender": gender_label,
                                   "mask_kind": mask_kind}


def test_always_right_and_always_wrong_subgroups():
    labels, preds, person, groups = _constructed()
    out = subgroups.subgroup_accuracy(labels, preds, person, groups,
                                      group_names={"age_group": AGE_NAMES,
                                                   "gender": ("male", "female")},
                                      num_samples=200)
    age = out["age_group"]
    assert list(age) == ["<=10", ">40"]  # codes 0 and 3, in code order; empty groups absent
    for task in ("gender", "expression"):
        right, wrong = age[">40"]["tasks"][task], age["<=10"]["tasks"][task]
        assert (right["accuracy"], right["low"], right["high"]) == (1.0, 1.0, 1.0)
        assert (wrong["accuracy"], wrong["low"], wrong["high"]) == (0.0, 0.0, 0.0)
    assert age[">40"]["n"] == 30 and age[">40"]["persons"] == 6
    # Within a gender, gender's majority rate is 1; half the persons of each are right.
    female = out["gender"]["female"]
    assert female["n"] == 30 and female["tasks"]["gender"]["majority_rate"] == 1.0
    assert female["tasks"]["gender"]["accuracy"] == pytest.approx(0.5)
    assert 0.0 <= female["tasks"]["gender"]["low"] < 0.5 < female["tasks"]["gender"]["high"]
    # String values name themselves.
    assert list(out["mask_kind"]) == ["cloth", "surgical"]
    assert out["mask_kind"]["cloth"]["n"] == 30 and out["mask_kind"]["cloth"]["persons"] == 12
    assert out["mask_kind"]["cloth"]["tasks"]["expression"]["accuracy"] == pytest.approx(0.5)


def test_majority_rate_is_the_subgroups_own():
    labels = {"gender": np.array([0, 0, 0, 1, 1, 1, 1, 1])}
    preds = {"gender": np.zeros(8, int)}
    person = np.arange(8)
    out = subgroups.subgroup_accuracy(labels, preds, person,
                                      {"split": np.array([0, 0, 0, 0, 1, 1, 1, 1])},
                                      num_samples=50)
    assert list(out["split"]) == ["0", "1"]
    assert out["split"]["0"]["tasks"]["gender"]["majority_rate"] == 0.75
    assert out["split"]["0"]["tasks"]["gender"]["accuracy"] == 0.75
    assert out["split"]["1"]["tasks"]["gender"]["accuracy"] == 0.0


def test_bad_inputs_are_refused():
    labels, preds, person, groups = _constructed()
    with pytest.raises(ValueError, match="no name"):
        subgroups.subgroup_accuracy(labels, preds, person, {"age_group": groups["age_group"]},
                                    group_names={"age_group": ("<=10", "11-20")})
    with pytest.raises(ValueError, match="mask_kind"):
        subgroups.subgroup_accuracy(labels, preds, person, {"mask_kind": groups["mask_kind"]},
                                    group_names={"mask_kind": ("cloth",)})
    with pytest.raises(ValueError, match="groups\\['gender'\\]"):
        subgroups.subgroup_accuracy(labels, preds, person, {"gender": np.zeros(3)})
    with pytest.raises(ValueError, match="differ"):
        subgroups.subgroup_accuracy(labels, {"gender": preds["gender"]}, person, {})


def test_subgroup_section_tables(tmp_path):
    from fgmask_jax.evaluation import report

    labels, preds, person, groups = _constructed()
    out = subgroups.subgroup_accuracy(labels, preds, person,
                                      {"age_group": groups["age_group"]},
                                      group_names={"age_group": AGE_NAMES}, num_samples=50)
    md = report.subgroup_section(out)
    lines = md.splitlines()
    assert "### by age_group" in lines
    header = next(line for line in lines if line.startswith("| age_group |"))
    assert "gender accuracy" in header and "expression accuracy" in header
    assert any(line.startswith("| >40 | 30 | 6 | 100.0% [100.0%, 100.0%]") for line in lines)
    assert any(line.startswith("| <=10 | 30 | 6 | 0.0% [0.0%, 0.0%]") for line in lines)
