"""Classifier-free guidance batches [uncond, cond], with SDXL's vector input beside the context."""

import torch

from sd_cli.sampling.guidance import GuidedModel

X = torch.arange(8.0).reshape(1, 2, 2, 2)
T = torch.tensor([10])


def recording_unet(calls):
    def unet(x, t, context, *vector):
        calls.append((x.shape[0], context[:, 0, 0].tolist(), [v[:, 0].tolist() for v in vector]))
        # cond context 1, uncond 0: the output tells the branches apart
        return x * 0 + context[:, :1, :1, None] + (vector[0][:, :1, None, None] if vector else 0)
    return unet


def test_sd_unets_get_three_arguments_and_guidance_mixes_the_raw_outputs():
    calls = []
    guided = GuidedModel(recording_unet(calls), torch.ones(1, 3, 4), torch.zeros(1, 3, 4), 7.5, "eps")
    out = guided.raw(X, T)
    assert calls == [(2, [0.0, 1.0], [])]
    assert torch.equal(out, torch.full_like(X, 0 + 7.5 * (1 - 0)))


def test_the_vector_goes_with_its_branch():
    calls = []
    guided = GuidedModel(recording_unet(calls), torch.ones(1, 3, 4), torch.zeros(1, 3, 4), 2.0, "eps",
                         vector=torch.full((1, 6), 10.0), uncond_vector=torch.full((1, 6), 3.0))
    out = guided.raw(X, T)
    assert calls == [(2, [0.0, 1.0], [[3.0, 10.0]])]
    assert torch.equal(out, torch.full_like(X, 3.0 + 2.0 * (11.0 - 3.0)))
    calls.clear()
    guided.scale = 1.0  # no unconditional pass: the conditional vector alone
    assert torch.equal(guided.raw(X, T), torch.full_like(X, 11.0)) and calls == [(1, [1.0], [[10.0]])]
