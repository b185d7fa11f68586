"""The modes on a loaded model, one module each, prompts and seeds in, images in [-1, 1] out:
txt2img, img2img, the hires fix, inpaint, depth2img and the SDXL refiner's hand-off, all on the
guided model of conditioning.py and the one start and denoising entry of sampling/denoising.py.
Files, batching and the command line live elsewhere."""
