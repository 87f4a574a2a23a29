"""Vocab-parallel KD loss (placeholder until implemented)."""


def vocab_parallel_kd_loss(*args, **kwargs):
    raise NotImplementedError("vocab_parallel_kd_loss is not implemented yet")
