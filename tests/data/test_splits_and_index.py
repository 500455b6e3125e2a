import numpy as np

from recsys_lightning.data.adapters import load_dataset
from recsys_lightning.data.indexing import build_index
from recsys_lightning.data.schema import RecData
from recsys_lightning.data.splits import leave_one_out


def test_leave_one_out():
    seq = np.array([5, 6, 7, 8])
    assert leave_one_out(seq, "test")[1] == 8 and list(leave_one_out(seq, "test")[0]) == [5, 6, 7]
    assert leave_one_out(seq, "val")[1] == 7 and list(leave_one_out(seq, "val")[0]) == [5, 6]
    assert leave_one_out(seq, "train")[1] == 6
    assert leave_one_out(np.array([1, 2]), "test") is None


def test_ties_in_time_are_broken_by_seeded_hash_not_by_id():
    users = ["u"] * 4
    items = ["a", "b", "c", "d"]
    orders = {tuple(RecData.build("x", users, items, [1, 1, 1, 1], seed=s).sequence(0)) for s in range(8)}
    assert len(orders) > 1  # the order depends on the seed, not on the ids


def test_sequential_ids_are_assigned_over_training_interactions_first(tiny_reviews):
    data = load_dataset("amazon_reviews", tiny_reviews, 0)
    index = build_index("sequential", data, 0)
    held_out = {int(data.sequence(u)[-1]) for u in range(data.num_users)} | {
        int(data.sequence(u)[-2]) for u in range(data.num_users)}
    in_train = {int(i) for u in range(data.num_users) for i in data.sequence(u)[:-2]}
    train_numbers = {int(index.render(i)) for i in in_train}
    only_held_out = held_out - in_train
    assert train_numbers == set(range(1, len(in_train) + 1))
    assert all(int(index.render(i)) > len(in_train) for i in only_held_out)
    assert index.parse(index.render(3)) == 3
