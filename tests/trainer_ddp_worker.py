"""Run by tests/test_trainer_distributed.py on two CPU ranks (torch.distributed.run + accelerate state).

Each rank (1) computes its local gradient of one batch without synchronisation, (2) the synchronised
gradient of the same batch through the DDP wrapper, then (3) trains a few steps; everything is saved
per rank for the test to compare.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.config import load_config  # noqa: E402
from trainer.loop import train  # noqa: E402


def gradients(cfg, out: Path) -> None:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from comfy_kiwi.loading.dit_loader import load_dit
    from trainer.data.cache import CachedDataset, collate
    from trainer.loop import sample_generator
    from trainer.methods import get_method

    method = get_method(cfg.method.name)(cfg)
    acc = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(
        find_unused_parameters=method.find_unused_parameters)])        # as the training loop sets it
    torch.manual_seed(cfg.schedule.seed)
    module = method.build({"dit": load_dit(cfg.model.dit, dtype=torch.float32)})
    for p in module.adapter.parameters():          # non-zero linears, so every weight gets a gradient
        if p.abs().max() == 0:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
    wrapped = acc.prepare(module)
    dataset = CachedDataset(next(Path(cfg.cache_dir).glob("latents-*.safetensors")))
    item = dataset[acc.process_index]                                      # different data per rank
    batch = collate([item], cfg.data.text_len)
    draws = method.sample_draws([item], [sample_generator(0, acc.process_index)])
    # local gradient: torch.autograd.grad does not run the gradient accumulators DDP hooks into
    named = [(n, p) for n, p in module.adapter.named_parameters()]
    local = torch.autograd.grad(module(batch, draws), [p for _, p in named], allow_unused=True)
    grads = {"local." + n: g for (n, _), g in zip(named, local) if g is not None}
    loss = wrapped(batch, draws)
    acc.backward(loss)                      # through DDP: averaged over the ranks
    grads.update({"synced." + n: p.grad.clone() for n, p in named if p.grad is not None})
    save_file(grads, str(out / f"grads-rank{acc.process_index}.safetensors"))


def main() -> None:
    toml, out = sys.argv[1], Path(sys.argv[2])
    cfg = load_config(toml)
    result = train(cfg, log=lambda *a: None)       # builds the cache (main process first), trains
    from accelerate import PartialState
    state = PartialState()
    rank = state.process_index
    print(f"rank {rank} of world {state.num_processes}: {state.distributed_type} {state.backend}", flush=True)
    weights = {k: v.contiguous() for k, v in result["module"].adapter.state_dict().items()}
    save_file(weights, str(out / f"weights-rank{rank}.safetensors"))
    (out / f"losses-rank{rank}.txt").write_text(" ".join(map(str, result["losses"])))
    gradients(cfg, out)


if __name__ == "__main__":
    main()
