"""Everything that touches image files: pixels in and out (images.py), inpainting masks
(masks.py), the x4 upscaler's fitted input (low_res.py), where outputs go without ever half-writing one (output.py), the infotext recorded in a
PNG (infotext.py), the invisible watermark (watermark.py), writing a run's images (writer.py) and
reading them back for `info`, `verify` and --from-png (reading.py)."""
