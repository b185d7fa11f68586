"""The modes on a loaded model, prompts and seeds in, images in [-1, 1] out: txt2img and img2img,
the hires fix, inpaint and depth2img. Files, batching and the command line live elsewhere."""
