"""generative-models' watermark as its demo saves images (sgm.inference.helpers.WatermarkEmbedder and
scripts/demo/streamlit_helpers.perform_save_locally), written out from that code for the tests."""

import numpy as np
import torch

# sgm.inference.helpers: the message as the original writes it, and its bits.
WATERMARK_MESSAGE = 0b101100111110110010010000011110111011000110011110
WATERMARK_BITS = [int(bit) for bit in bin(WATERMARK_MESSAGE)[2:]]


def demo_embed_watermark(images: torch.Tensor) -> torch.Tensor:
    """WatermarkEmbedder.__call__ on [B, 3, H, W] in [0, 1]: 255·x, to NHWC and BGR, dwtDct per image,
    back to RGB and NCHW, / 255, clamped."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    image_np = (255 * images).detach().cpu().permute(0, 2, 3, 1).numpy()[:, :, :, ::-1]
    for k in range(image_np.shape[0]):
        image_np[k] = encoder.encode(np.ascontiguousarray(image_np[k]), "dwtDct")
    marked = torch.from_numpy(np.ascontiguousarray(image_np[:, :, :, ::-1])).permute(0, 3, 1, 2)
    return torch.clamp(marked / 255, min=0.0, max=1.0)


def demo_saved_pixels(decoded: torch.Tensor) -> list[np.ndarray]:
    """perform_save_locally: clamp((x + 1) / 2), embed_watermark, 255.0·x, astype(uint8)."""
    samples = demo_embed_watermark(torch.clamp((decoded.detach().float() + 1.0) / 2.0, min=0.0, max=1.0))
    return [(255.0 * sample.permute(1, 2, 0).numpy()).astype(np.uint8) for sample in samples]
