"""Under DDP each rank's loaders hold a disjoint share of the samples, together all of them."""

from types import SimpleNamespace

import torch

from lipschitz_dd.data import SyntheticDataModule


def _rank_batches(rank, world_size, loader_name):
    dm = SyntheticDataModule(num_train=10, num_test=7, batch_size=3, eval_batch_size=4)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    loader = getattr(dm, loader_name)()
    loader = loader[1] if isinstance(loader, list) else loader
    return dm, torch.cat([x for x, _ in loader])


def test_ranks_partition_the_training_set():
    dm, x0 = _rank_batches(0, 2, "train_dataloader")
    _, x1 = _rank_batches(1, 2, "train_dataloader")
    assert len(x0) == 5 and len(x1) == 5
    both = torch.cat([x0, x1])
    assert torch.equal(both.sort(0).values, dm.train_x.sort(0).values)


def test_uneven_training_set_is_padded_so_ranks_run_equal_updates():
    dm = SyntheticDataModule(num_train=11, num_test=7, batch_size=5)
    dm.setup("fit")
    shards = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        assert len(loader) == 2  # 6 samples each: the same number of batches (updates) on both ranks
        shards.append(torch.cat([x for x, _ in loader]))
    both = torch.cat(shards)
    assert len(both) == 12
    assert torch.equal(torch.unique(both, dim=0), torch.unique(dm.train_x, dim=0))  # every sample, one twice
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    assert len(torch.cat([x for x, _ in dm.val_dataloader()[1]])) == 5  # evaluation: 6 + 5, no padding


def test_ranks_partition_eval_sets():
    dm, t0 = _rank_batches(0, 2, "test_dataloader")
    _, t1 = _rank_batches(1, 2, "test_dataloader")
    assert len(t0) + len(t1) == len(dm.test_x) == 7
    _, v0 = _rank_batches(0, 3, "val_dataloader")
    assert torch.equal(v0, dm.train_x[0::3])


def test_single_process_sees_everything():
    dm, x = _rank_batches(0, 1, "train_dataloader")
    assert torch.equal(x, dm.train_x)
