"""How the model runs, not what it computes: device and precision (device.py), whether a batch
fits (memory.py), --offload (offload.py), --compile (compiling.py), tiled VAE decoding
(tiling.py), reuse of freed memory on the CPU (allocator.py) and, on the CPU, the parts a step
does not use waiting in the checkpoint file (waiting_parts.py)."""
