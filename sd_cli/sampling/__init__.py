"""Sampling on a guided model. denoising.py is the one way through: `start` turns strength into a
start latent for every mode and sampler family, `denoise` runs DDIM, PLMS, DPM-Solver (ddim.py,
dpm_solver.py) or a k-diffusion sampler (k_samplers.py over sigma_schedules.py and denoiser.py) from
it, every step ending through the hooks of steps.py. The sampler registry (samplers.py), the DDIM
schedule (schedule.py), classifier-free guidance (guidance.py) and per-image noise (noise.py) serve
them. No file, prompt or CLI concern lives here."""
