"""Run by tests/training/test_loop.py under torchrun: train, then record this rank's final weights."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import torch.distributed as dist

from pawlab.config import RuntimeConfig, TrainConfig
from pawlab.runtime import decided_by_main, init_distributed
from pawlab.training import Trainer, train
from pawlab.training.callbacks import Callback

TINY = [
    {"type": "input", "size": 16},
    {"type": "conv", "kernel": 3, "filters": 8, "pad": 1},
    {"type": "batch-norm"},
    {"type": "relu"},
    {"type": "max-pool"},
    {"type": "linear"},
]


class WeightsDigest(Callback):
    def after_fit(self, trainer: Trainer) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(trainer.network.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
        self.hexdigest = digest.hexdigest()


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    init_distributed()
    rank = dist.get_rank()
    capture = WeightsDigest()
    config = TrainConfig(epochs=4, lr=3e-3, batch_size=16)
    result = train(
        src,
        out / "model.safetensors",
        TINY,
        config,
        workers=1,
        stream=io.StringIO(),
        callbacks=[capture],
        runtime=RuntimeConfig(progress=False),
    )
    record = {
        "world": dist.get_world_size(),
        # a choice every rank must share (the features' route): rank 0's, sent to the others
        "decided": decided_by_main(lambda: f"rank {rank}'s choice"),
        "losses": [m["train_loss"] for m in result.history],
        "weights": capture.hexdigest,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
