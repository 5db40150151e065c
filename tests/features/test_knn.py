import torch

from pipelines.features.knn import knn_accuracy, knn_predict


def test_weighted_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    # k=1: the nearest is bank[0], label 0
    assert knn_predict(bank, labels, query, 2, k=1).item() == 0
    # k=3, T large: weights nearly equal, two votes for class 1 win
    assert knn_predict(bank, labels, query, 2, k=3, temperature=100.0).item() == 1
    # k=3, T small: the closest neighbour's weight dominates
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.01).item() == 0


def test_accuracy_on_separable_clusters():
    torch.manual_seed(0)
    centers = torch.eye(4) * 10
    bank_labels = torch.arange(4).repeat(25)
    bank = centers[bank_labels] + torch.randn(100, 4)
    query_labels = torch.arange(4).repeat(5)
    queries = centers[query_labels] + torch.randn(20, 4)
    assert knn_accuracy(bank, bank_labels, queries, query_labels, 4, k=20) == 1.0
