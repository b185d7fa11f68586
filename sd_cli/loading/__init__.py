"""From files on disk to a ready model: checkpoints read as data, never as code (checkpoint.py),
where they are found (locations.py, packaged.py), the original YAMLs behind an allow-list
(config.py), the config chosen from the weights when none is given (detection.py), the strict
load itself (loader.py), and the files that change a loaded model: a separate VAE (vae_file.py)
and LoRA (lora.py)."""
