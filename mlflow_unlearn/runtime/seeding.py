"""Seeding of every random number generator a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same way for loaders.

    >>> a = torch.rand(2, generator=seed_everything(0))
    >>> torch.equal(a, torch.rand(2, generator=seed_everything(0)))
    True
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
