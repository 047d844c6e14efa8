"""torch's ``DistributedDataParallel`` with its all-reduces counted like a communicator's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.distributed as dist
from torch import nn

from elastic_entropy.comm.base import CommStats

if TYPE_CHECKING:
    from elastic_entropy.distributed import DistInfo


def wrap_data_parallel(model: nn.Module, info: DistInfo, stats: CommStats) -> nn.Module:
    """torch's ``DistributedDataParallel`` around ``model``, its all-reduces counted in ``stats``
    (a communication hook doing what DDP's default does: average each bucket).

    One process alone has nothing to average with: the model is returned as it is.
    """
    if not info.is_distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    # buffers (batch-norm statistics) stay per process, as in DataParallelSGD
    wrapped = nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, broadcast_buffers=False
    )
    world_size = info.world_size

    # no annotations: DDP checks a hook's against its own classes, and here they are strings
    def averaged(state, bucket):  # noqa: ANN001
        buf = bucket.buffer()
        stats.num_collectives += 1
        stats.bytes_per_replica += buf.numel() * buf.element_size()
        buf.div_(world_size)
        future = dist.all_reduce(buf, async_op=True).get_future()
        return future.then(lambda done: done.value()[0])

    wrapped.register_comm_hook(None, averaged)
    return wrapped
