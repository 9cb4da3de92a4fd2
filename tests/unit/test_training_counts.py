"""The training ledger's small readers of a batch: the storage a batch lives in, its samples, its fingerprint."""

import torch

from torchdoctor.agent.recovery.training_counts import batch_samples, fingerprint, storage_of


def test_a_batch_is_found_again_by_its_storage_and_counted_by_its_first_dimension():
    batch = torch.arange(12.0).reshape(4, 3)
    assert storage_of(batch) == batch.untyped_storage().data_ptr() != 0
    assert storage_of(batch[1:]) == storage_of(batch)  # a view of the same batch
    assert storage_of("not a tensor") is None
    samples, tensor = batch_samples((batch, torch.zeros(4)))
    assert samples == 4 and tensor is batch
    assert fingerprint(batch) == float(batch.double().sum())
