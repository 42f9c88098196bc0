"""A minimal DistributedDataParallel training script for `mlpd run ... -- torchrun`.

    mlpd run --gpus 4 --image mlpd/pytorch:latest -- torchrun --standalone --nproc-per-node=gpu train_ddp.py

torchrun starts one process per GPU of the job (`--nproc-per-node=gpu` counts the GPUs the job's
container sees: exactly the ones mlpd allocated to it) and sets RANK, LOCAL_RANK and WORLD_SIZE for
each. `--standalone` picks a free rendezvous port on the container's own loopback, so two jobs never
collide. NCCL passes tensors through /dev/shm, which mlpd sizes for the job (jobs.shm_size, the
spec's `shm`). Without a GPU (or with --cpu) it uses the gloo backend on the CPU, which is how the
test suite runs it: `torchrun --standalone --nproc-per-node=2 train_ddp.py --cpu`.

Data comes from /datasets/NAME (declared by an admin, read-only) when --data names a file of float32
rows there; otherwise a synthetic regression problem. Checkpoints go to /outputs (kept with the job)
or to your home (/home/mlpd), which your next job and your workspaces see too.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU even when GPUs are visible")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (they pass batches through /dev/shm)")
    parser.add_argument("--checkpoint", default="/outputs/ddp.pt" if os.path.isdir("/outputs") else "ddp.pt")
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available() and not args.cpu
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    g = torch.Generator().manual_seed(0)  # the same data on every rank; the sampler gives each rank its share
    x = torch.randn(args.rows, 16, generator=g)
    y = x @ torch.arange(1.0, 17.0).unsqueeze(1) + 0.01 * torch.randn(args.rows, 1, generator=g)
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=256, sampler=sampler, num_workers=args.workers, persistent_workers=args.workers > 0)

    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(16, 1).to(device), device_ids=[local] if use_cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    started = time.time()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, device=device)
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()  # DDP all-reduces the gradients across every rank here
            opt.step()
            total += torch.stack([loss.detach() * len(xb), torch.tensor(float(len(xb)), device=device)])
        dist.all_reduce(total)
        if rank == 0:
            print(f"epoch {epoch} loss {(total[0] / total[1]).item():.4f} rows {int(total[1].item())}", flush=True)

    # Every rank holds the same weights after DDP: check it, as a real run would not need to.
    weights = model.module.weight.detach().clone()
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    same = all(torch.allclose(gathered[0], w) for w in gathered)
    if rank == 0:
        torch.save(model.module.state_dict(), args.checkpoint)
        print(f"ddp ok: world {world} backend {dist.get_backend()} device {device.type} ranks agree {same} "
              f"seconds {time.time() - started:.1f} checkpoint {args.checkpoint}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
