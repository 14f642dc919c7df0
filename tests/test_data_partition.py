"""Patient-level split and site partitioning (by-site, IID, Dirichlet label skew)."""

from collections import Counter

import pytest

from cxrsynth.data.partition import label_skew, partition
from cxrsynth.data.phantom import make_phantom
from cxrsynth.data.split import split_by_patient
from cxrsynth.errors import InputError


@pytest.fixture(scope="module")
def recs():
    return make_phantom(600, sites=3, seed=8, image_size=16, lateral=False)


def _patients(part):
    return {r.patient_id for r in part}


def test_split_never_puts_a_patient_on_both_sides(recs):
    out = split_by_patient(recs, 0.25, seed=1)
    train = {r.patient_id for r in out if r.split == "train"}
    hold = {r.patient_id for r in out if r.split == "holdout"}
    assert not train & hold and train and hold
    assert 0.15 < len(hold) / (len(train) + len(hold)) < 0.35
    assert [r.split for r in split_by_patient(recs[:100], 0.25, seed=1)] == [
        r.split for r in out[:100]
    ]  # more records move no patient


@pytest.mark.parametrize("mode", ["by-site", "iid", "dirichlet"])
def test_partitions_cover_everything_once_and_keep_patients_whole(recs, mode):
    parts = partition(recs, 3, mode, alpha=0.3, seed=0)
    assert len(parts) == 3 and all(parts)
    assert sorted(r.record_id for p in parts for r in p) == sorted(r.record_id for r in recs)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _patients(parts[i]) & _patients(parts[j])


def test_by_site_follows_the_site_column(recs):
    parts = partition(recs, 3, "by-site")
    assert [set(r.site for r in p) for p in parts] == [{"site0"}, {"site1"}, {"site2"}]
    assert [set(r.site for r in p) for p in partition(recs, 2, "by-site")] == [{"site0", "site2"}, {"site1"}]
    with pytest.raises(InputError, match="iid or dirichlet"):
        partition(recs, 4, "by-site")


def test_dirichlet_skews_labels_more_than_iid_and_smaller_alpha_more(recs):
    iid = label_skew(partition(recs, 3, "iid", seed=0))
    strong = label_skew(partition(recs, 3, "dirichlet", alpha=0.1, seed=0))
    mild = label_skew(partition(recs, 3, "dirichlet", alpha=100.0, seed=0))
    assert strong > 2 * iid and strong > mild


def test_partition_is_deterministic_and_sizes_iid_are_balanced(recs):
    a = partition(recs, 3, "iid", seed=4)
    b = partition(recs, 3, "iid", seed=4)
    assert [[r.record_id for r in p] for p in a] == [[r.record_id for r in p] for p in b]
    sizes = Counter({i: len(p) for i, p in enumerate(a)})
    assert max(sizes.values()) < 1.4 * min(sizes.values())


def test_bad_arguments_are_input_errors(recs):
    with pytest.raises(InputError, match="not one of"):
        partition(recs, 3, "random")
    with pytest.raises(InputError, match="cannot fill"):
        partition(recs[:2], 5, "iid")
