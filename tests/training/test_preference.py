"""Preference training's CPU tiles for TRL's chunked log-probability head (tunery.training.preference)."""

from __future__ import annotations

import pytest
import torch

from tunery.training import preference


@pytest.fixture
def trl_tiles(monkeypatch):
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    # restored after the test: the setting is process-wide
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", kernel.TOKEN_CHUNK_SIZE)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)
    return kernel, trl_utils


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPU runs keep TRL's tiles")
def test_cpu_training_sets_the_pinned_trl_tiles(trl_tiles):
    kernel, trl_utils = trl_tiles
    assert (kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == (4096, 32768)  # TRL's own
    assert preference.fit_logprob_tiles_to_cpu() is True
    assert (kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE) == preference.CPU_LOGPROB_TILE


def _scored(kernel, hidden, weight, targets, upstream, tokens: int, vocabulary: int):
    """Log-probabilities of ``targets`` and the gradients of ``upstream . logprobs`` with tiles of
    ``tokens`` x ``vocabulary`` logits."""
    kernel.TOKEN_CHUNK_SIZE = tokens
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    logprobs = kernel.ChunkedLogProbFunction.apply(
        hidden, weight, None, targets, 1.0, vocabulary, None, 1.0, ("log_probs",)
    )[0]
    (logprobs * upstream).sum().backward()
    return logprobs.detach().float(), hidden.grad.float(), weight.grad.float()


def _inputs(dtype):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(250, 32, generator=generator).to(dtype)
    weight = torch.randn(1300, 32, generator=generator).to(dtype)
    targets = torch.randint(0, 1300, (250,), generator=generator)
    return hidden, weight, targets, torch.randn(250, generator=generator)


def test_small_tiles_give_the_log_probabilities_and_gradients_of_the_full_logits(trl_tiles):
    kernel, _ = trl_tiles
    hidden, weight, targets, upstream = _inputs(torch.float32)
    # several tiles each way; the last vocabulary tile is partial
    tiled = _scored(kernel, hidden, weight, targets, upstream, tokens=96, vocabulary=512)

    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    expected = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    (expected * upstream).sum().backward()
    for got, want in zip(tiled, (expected.detach(), hidden.grad, weight.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_small_bf16_tiles_agree_with_trls_single_tile(trl_tiles):
    kernel, _ = trl_tiles
    hidden, weight, targets, upstream = _inputs(torch.bfloat16)
    tiled = _scored(kernel, hidden, weight, targets, upstream, tokens=96, vocabulary=512)
    whole = _scored(kernel, hidden, weight, targets, upstream, tokens=4096, vocabulary=32768)
    for got, want in zip(tiled, whole, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
