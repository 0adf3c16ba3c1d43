"""Endless batches of dataset rows, drawn from a generator of their own (checkpointed, so exact on resume)."""

from __future__ import annotations

import torch
from torch import Tensor


class BatchSampler:
    """Endless batches of indices: a fresh permutation per pass, drawn from its own generator."""

    def __init__(self, indices: Tensor, batch_size: int, seed: int):
        if indices.numel() == 0 and batch_size > 0:
            raise ValueError("cannot draw batches from an empty index set")
        self.indices = indices
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def next(self) -> Tensor:
        out = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.order.numel():
                self.order = self.indices[torch.randperm(self.indices.numel(), generator=self.generator)]
                self.pos = 0
            take = self.order[self.pos : self.pos + need]
            self.pos += take.numel()
            need -= take.numel()
            out.append(take)
        return torch.cat(out) if out else self.indices[:0]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.pos = int(state["pos"])
