"""Several processes, one fit: UCALReID under PyTorch's distributed engine.

One process per device (``torchrun --nproc_per_node=K -m ucal train ...``,
or ``UCALReID.fit`` called inside an initialised process group). What runs
where:

- every rank: the forward and backward pass of its shard of each batch (the
  network wrapped in ``DistributedDataParallel``, BatchNorm synchronised
  across ranks), its shard of every feature extraction (gathered, so that
  every rank holds all features), the feature memory (each step's batch
  features gathered before the update: the memory is identical everywhere),
  evaluation and validation scores (computed from the gathered features);
- rank 0 only: clustering, refinement, the oracle and the label memory,
  questions before training, checkpoints, the log and progress bars. Its
  results (labels, the epoch record) are broadcast; an exception there is
  broadcast too, so that every rank ends with it instead of waiting.

The global batch is ``batch_size`` whatever the number of processes: every
rank draws the same batches from one seeded sampler and keeps its share of
the pseudo identities; augmentations are drawn for the whole batch and
each rank applies its rows. With augmentation off, ``K`` processes compute
the losses of one process (up to float rounding).
"""

import datetime
import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["DistributedContext", "DistributedError", "SyncBatchNorm", "sync_batchnorm",
           "unsync_batchnorm"]

logger = logging.getLogger(__name__)

# The other ranks wait in a broadcast while rank 0 asks its oracle, which may be
# a person: the process group ucal makes waits a day, not the backend's 10-30 min.
GROUP_TIMEOUT = datetime.timedelta(hours=24)


class DistributedError(RuntimeError):
    """Raised on every other rank when rank 0 failed (the message says how).

    With several processes, rank 0 alone clusters and asks the oracle; when
    that fails (an ``OracleError``, a ``KeyboardInterrupt``...), rank 0
    raises its own exception and the other ranks this one, carrying its
    type and message, instead of waiting for a result that never comes.

    Examples
    --------
    >>> from ucal.reid import DistributedError
    >>> issubclass(DistributedError, RuntimeError)
    True
    """


def _import_dynamo_first():
    """Import ``torch._dynamo`` before the process group exists.

    ``DistributedDataParallel`` imports it. Imported while a group exists, it
    keeps that group alive past ``destroy_process_group`` (seen with torch
    2.14): gloo's threads then outlive the fit and, rarely, abort the process
    at exit ("terminate called without an active exception"). What holds the
    group is in the ``torch.distributed._shard`` import chain that
    ``torch._dynamo`` pulls in (importing ``_shard`` or ``fsdp`` after the
    group does the same). Imported first, it holds nothing, and the group
    ends with the fit.
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # pragma: no cover - a build without it has nothing to hold
        pass


class DistributedContext:
    """The process group of a fit, or a single process (``world_size == 1``).

    Parameters
    ----------
    world_size : int
        Number of processes.
    rank : int
        This process's rank.
    local_rank : int
        Its rank on this machine (its GPU).
    owned : bool
        Whether this context initialised the process group (and destroys it
        at :meth:`close`).
    """

    def __init__(self, world_size=1, rank=0, local_rank=0, owned=False):
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.local_rank = int(local_rank)
        self.owned = owned

    # ------------------------------------------------------------ set-up
    @classmethod
    def detect(cls, device="auto"):
        """The context of this process: an initialised group, torchrun's, or none.

        A process group already initialised (by the user) is used as it is
        (its timeout must cover the time a person takes to answer: the other
        ranks wait while rank 0 asks).
        Otherwise torchrun's environment (``WORLD_SIZE`` above 1, ``RANK``,
        ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) initialises one:
        NCCL when the fit runs on CUDA, else gloo.
        """
        if dist.is_available() and dist.is_initialized():
            if dist.get_world_size() == 1:
                return cls()
            # a launcher of the user's may have chosen the GPU without setting LOCAL_RANK
            cuda = torch.cuda.is_available() and str(device) != "cpu"
            default = torch.cuda.current_device() if cuda else 0
            local_rank = int(os.environ.get("LOCAL_RANK", default))
            return cls(dist.get_world_size(), dist.get_rank(), local_rank)
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if world_size <= 1 or not dist.is_available():
            return cls()
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} is set but RANK or MASTER_ADDR is not: launch "
                "with torchrun, or initialise torch.distributed before fit."
            )
        cuda = torch.cuda.is_available() and str(device) != "cpu"
        if cuda:
            torch.cuda.set_device(local_rank)
        _import_dynamo_first()
        dist.init_process_group("nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
        return cls(dist.get_world_size(), dist.get_rank(), local_rank, owned=True)

    @property
    def enabled(self):
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self):
        """Whether this is rank 0 (the only one that clusters, asks and writes)."""
        return self.rank == 0

    def device(self, device):
        """The device of this rank: its own GPU when the fit runs on CUDA."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def close(self, *, synchronise=False):
        """Destroy the process group if this context made it.

        ``synchronise`` (a fit that ended normally): every rank reaches this
        point before the group goes, so that no rank tears down its
        connections under another's last messages (gloo then aborts the
        slower process at exit). A rank that cannot synchronise (another one
        failed) logs it and destroys the group all the same.
        """
        if self.owned and dist.is_initialized():
            if synchronise and self.world_size > 1:
                try:
                    dist.barrier()
                except RuntimeError as exc:  # a peer already gone: nothing to wait for
                    logger.warning("Rank %d could not wait for the other ranks at the end: %s",
                                   self.rank, exc)
            dist.destroy_process_group()
            self.owned = False
            self.world_size = 1  # nothing collective may follow

    # ------------------------------------------------- rank 0, then all
    def broadcast(self, obj):
        """``obj`` of rank 0 on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, fn, *, share=True):
        """``fn()`` on rank 0, its result broadcast; its exception ends every rank.

        Rank 0 re-raises its own exception (an ``OracleError``, a
        ``KeyboardInterrupt``...); the other ranks raise
        :class:`DistributedError` with its message, instead of waiting for
        a broadcast that never comes. ``share=False`` broadcasts only
        whether it worked (the others get None).
        """
        if not self.enabled:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:
                self.broadcast(("error", f"{type(exc).__name__}: {exc}"))
                raise
            self.broadcast(("ok", result if share else None))
            return result
        kind, value = self.broadcast(None)
        if kind == "error":
            raise DistributedError(f"Rank 0 failed, so this rank stops too: {value}")
        return value

    def settle(self, error=None, flag=False):
        """A meeting point of all ranks after work that may fail on any of them.

        Every rank brings its exception (or None) and a flag; when one rank
        failed, each raises (the failed one its own exception, the others
        :class:`DistributedError`), else rank 0's flag is returned.
        """
        if not self.enabled:
            if error is not None:
                raise error
            return flag
        mine = None if error is None else f"rank {self.rank}: {type(error).__name__}: {error}"
        every = [None] * self.world_size
        dist.all_gather_object(every, (mine, bool(flag)))
        if error is not None:
            raise error
        failed = [message for message, _ in every if message is not None]
        if failed:
            raise DistributedError("Another rank failed, so this rank stops too: " + "; ".join(failed))
        return every[0][1]

    def check_same(self, facts):
        """Raise on every rank when ``facts`` (a dict) differ between ranks.

        Every rank must call ``fit`` with the same data and the same kind of
        arguments: rank 0 decides, the others follow its broadcasts.
        """
        if not self.enabled:
            return
        every = [None] * self.world_size
        dist.all_gather_object(every, facts)
        differ = sorted(k for k in facts if any(f.get(k) != every[0].get(k) for f in every))
        if differ:
            detail = "; ".join(
                f"{k}: " + ", ".join(f"rank {r} {f.get(k)!r}" for r, f in enumerate(every))
                for k in differ
            )
            raise ValueError(
                "Every process must call fit with the same data and the same kinds of "
                f"arguments (rank 0 asks the oracle, but every rank passes one); they differ: "
                f"{detail}."
            )

    # ------------------------------------------------------- sharding
    def shard(self, n):
        """The contiguous block of ``range(n)`` this rank handles (rank order)."""
        return np.array_split(np.arange(n), self.world_size)[self.rank]

    def gather_rows(self, local, sizes=None):
        """Concatenate every rank's rows of ``local`` (a tensor), in rank order.

        ``sizes``, every rank's row count, saves exchanging them when every
        rank already knows them (the shares of a training batch).
        """
        if not self.enabled:
            return local
        if sizes is None:
            counts = torch.tensor([local.shape[0]], device=local.device)
            every = [torch.zeros_like(counts) for _ in range(self.world_size)]
            dist.all_gather(every, counts)
            sizes = [int(c.item()) for c in every]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def batch_shares(self, groups):
        """Positions of a batch's rows per rank: whole groups (identities), balanced.

        Parameters
        ----------
        groups : list of int
            Sizes of the batch's consecutive groups (one per pseudo identity).

        Returns
        -------
        shares : list of ndarray
            For each rank, the row positions (into the batch) it trains on.
        """
        total = int(sum(groups))
        starts = np.concatenate([[0], np.cumsum(groups)[:-1]]).astype(int)
        # a group belongs to the rank whose equal slice of the batch holds its first row
        owner = np.minimum(starts * self.world_size // max(total, 1), self.world_size - 1)
        shares = [[] for _ in range(self.world_size)]
        for start, size, rank in zip(starts, groups, owner):
            shares[rank].append(np.arange(start, start + size))
        # A share of one row cannot train a BatchNorm of its own (sync_batchnorm=False):
        # it takes a group from the largest share that can give one.
        for _ in range(len(groups)):
            rows = [sum(g.size for g in share) for share in shares]
            needy = [r for r in range(self.world_size) if rows[r] < 2]
            donors = [r for r in np.argsort(rows)[::-1] if len(shares[r]) > 1]
            if not needy or not donors:
                break
            donor = donors[0]
            smallest = min(range(len(shares[donor])), key=lambda i: shares[donor][i].size)
            if rows[donor] - shares[donor][smallest].size < 2:
                break
            shares[needy[0]].append(shares[donor].pop(smallest))
        return [np.concatenate(s) if s else np.empty(0, dtype=int) for s in shares]

    def all_reduce_sum(self, tensor):
        """Sum of ``tensor`` over ranks (in place; returned)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor


# ------------------------------------------------------------------ BatchNorm
class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch normalisation with the statistics of the whole global batch.

    The forward pass gathers each rank's count, per-channel mean and sum of
    squared deviations (one ``all_gather``) and combines them exactly; the
    backward pass sums the two reductions its gradient needs (one
    ``all_reduce``). Works with gloo on CPUs and NCCL on GPUs; computes in
    float32.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        n_channels = x.shape[1]
        shape = [1, n_channels] + [1] * (x.dim() - 2)
        # Each rank's count, mean and sum of squared deviations, combined exactly
        # (Chan et al.): no E[x^2] - E[x]^2 cancellation when the mean is large.
        count = torch.full((1,), xf.numel() / n_channels, device=x.device)
        if xf.numel():
            local_mean = xf.mean(dims)
            local_m2 = ((xf - local_mean.view(shape)) ** 2).sum(dims)
        else:  # an empty share weighs nothing
            local_mean = local_m2 = xf.new_zeros(n_channels)
        mine = torch.cat([count, local_mean, local_m2])
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        every = torch.stack(every)
        counts, means, m2s = every[:, :1], every[:, 1:n_channels + 1], every[:, n_channels + 1:]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / total
        invstd = torch.rsqrt(var + eps)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.total, ctx.dims, ctx.shape, ctx.dtype = total, dims, shape, x.dtype
        unbiased = var * total / (total - 1).clamp(min=1)
        ctx.mark_non_differentiable(mean, unbiased)
        return y.to(x.dtype), mean, unbiased

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        xhat, invstd, weight = ctx.saved_tensors
        dims, shape, total = ctx.dims, ctx.shape, ctx.total
        gy = grad_y.float()
        sum_dy = gy.sum(dims)
        sum_dy_xhat = (gy * xhat).sum(dims)
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both)
        n_channels = sum_dy.numel()
        mean_dy = (both[:n_channels] / total).view(shape)
        mean_dy_xhat = (both[n_channels:] / total).view(shape)
        scale = invstd.view(shape)
        if weight is not None:
            scale = scale * weight.float().view(shape)
        grad_x = scale * (gy - mean_dy - xhat * mean_dy_xhat)
        # parameter gradients of this rank's share: DistributedDataParallel averages them
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None else None
        return (grad_x.to(ctx.dtype),
                grad_weight if ctx.needs_input_grad[1] else None,
                grad_bias if ctx.needs_input_grad[2] else None,
                None)


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batch of every rank.

    Same parameters, buffers and state-dict keys as the BatchNorm it
    replaces (a checkpoint written by several processes loads into one),
    and the same arithmetic as one process training on the whole batch.
    In eval mode, or without a process group, it is a plain BatchNorm.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        y, mean, var = _SyncBatchNormFunction.apply(
            x, self.weight, self.bias, self.eps
        )
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype),
                                                          alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(var.to(self.running_var.dtype),
                                                         alpha=momentum)
        return y


def _swap_batchnorm(module, to_sync):
    """Replace every BatchNorm of ``module`` (in place) by the other kind."""
    for name, child in module.named_children():
        if not (isinstance(child, _BatchNorm) and isinstance(child, SyncBatchNorm) != to_sync):
            _swap_batchnorm(child, to_sync)
            continue
        # a synchronised layer remembers the kind it replaced (BatchNorm1d for the neck)
        kind = SyncBatchNorm if to_sync else getattr(child, "plain_kind", torch.nn.BatchNorm2d)
        new = kind(child.num_features, child.eps, child.momentum, child.affine,
                   child.track_running_stats)
        new.load_state_dict(child.state_dict())
        if child.affine:
            new.weight.requires_grad_(child.weight.requires_grad)
            new.bias.requires_grad_(child.bias.requires_grad)
        if to_sync:
            new.plain_kind = type(child)
        new.train(child.training)
        like = next(iter([*child.parameters(), *child.buffers()]), None)
        if like is not None:
            new.to(like.device)
        setattr(module, name, new)
    return module


def sync_batchnorm(module):
    """``module`` with every BatchNorm synchronised across ranks (in place)."""
    return _swap_batchnorm(module, True)


def unsync_batchnorm(module):
    """``module`` with plain BatchNorms again (in place), for one process."""
    return _swap_batchnorm(module, False)
