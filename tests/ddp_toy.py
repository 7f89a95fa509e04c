"""A deterministic toy run of core.trainer.train, for the distributed test.

    torchrun --nproc_per_node 2 tests/ddp_toy.py OUT BATCH     (or python tests/ddp_toy.py OUT BATCH)

Each process writes OUT/rank{r}.json: the sample indices it saw per step and its final weights.
"""

import json
import sys
from pathlib import Path

import torch

from core.config import TrainConfig
from core.trainer import Phase, make_accelerator, make_optimizer, train


class Toy(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        self.seen: list[int] = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.seen.append(i)
        return {"x": self.x[i], "y": self.y[i]}


def main(out: Path, batch: int) -> None:
    tc = TrainConfig(batch_size=batch, report_to="none", ema_decay=0, checkpointing_steps=0,
                     validation_steps=0, lr_warmup_steps=0, lr_schedule="constant", max_grad_norm=0)
    acc = make_accelerator(tc, out, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt, sched = make_optimizer(model.parameters(), 0.05, tc, 8)
    model, opt = acc.prepare(model, opt)
    data = Toy()

    def loss_fn(b, step):
        loss = torch.mean((model(b["x"]).squeeze(-1) - b["y"]) ** 2)
        return loss, {"loss": loss.detach()}

    train(acc, tc, phases=[Phase("toy", model, opt, sched, loss_fn)], dataset=data, total_steps=8, seed=0,
          output_dir=out)
    w = acc.unwrap_model(model)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{acc.process_index}.json").write_text(json.dumps({
        "seen": data.seen, "weight": w.weight.detach().flatten().tolist(), "bias": w.bias.item()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
