"""Sampling on a guided model: the one sampler registry (samplers.py), the original DDIM, PLMS and
DPM-Solver (ddim.py, dpm_solver.py), the k-diffusion samplers over σ schedules (k_samplers.py,
sigma_schedules.py, denoiser.py), classifier-free guidance (guidance.py) and per-image noise
(noise.py). No file, prompt or CLI concern lives here."""
