"""Where the lean path's resident GPU memory lives after `configure_model` (diagnostic, one GPU).

    PYTHONPATH=src:.gpu-site python3 benchmarks/where_memory.py /tmp/e2b-random

Prints allocated memory after loading and after Lightning-style `.to(cuda)`, where the host PLE table
is, and every CUDA tensor over 128 MiB that the Python heap still references.
"""

import gc
import sys

import torch

from medqlora.model.module import QLoRAModule

GIB = 2**30


class _Strategy:
    root_device = torch.device("cuda:0")


class _Trainer:
    strategy = _Strategy()


module = QLoRAModule(sys.argv[1])
module._trainer = _Trainer()  # configure_model places the model on the strategy's device
module.configure_model()
table = module.host_embedding.table
print("after configure_model", round(torch.cuda.memory_allocated() / GIB, 2), "GiB; table", table.device, table.dtype)
module.to("cuda:0")
gc.collect()
print("after module.to", round(torch.cuda.memory_allocated() / GIB, 2), "GiB")
big = [(round(t.numel() * t.element_size() / GIB, 2), tuple(t.shape), str(t.dtype)) for t in gc.get_objects()
       if torch.is_tensor(t) and t.is_cuda and t.numel() * t.element_size() > 2**27]
print(sorted(big, reverse=True)[:10])
