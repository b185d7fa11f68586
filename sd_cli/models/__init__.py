"""The networks, with module names equal to the original checkpoints' keys so that their state
dicts load strictly without renaming: UNet, VAE, the CLIP and OpenCLIP text encoders, MiDaS, and
LatentDiffusion, which holds them with the noise schedule."""
