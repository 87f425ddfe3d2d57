"""Times torch.load of a checkpoint (weights_only=True, to CPU memory): median of N loads.

    load_checkpoint.py FILE N
"""
import json
import sys
import time

import torch

path, n = sys.argv[1], int(sys.argv[2])
times = []
for _ in range(n):
    t = time.perf_counter()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    times.append(time.perf_counter() - t)
    del ckpt
times.sort()
print(json.dumps({"median_s": times[len(times) // 2], "torch": torch.__version__}))
