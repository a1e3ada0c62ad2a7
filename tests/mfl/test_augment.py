"""Augmentations: drawn per sample and per branch, seeded, geometry exact for D4."""

from __future__ import annotations

import torch

from histokd.methods.more_from_less import (
    apply_geometry,
    augment_pair,
    draw_geometry,
    jitter_dense,
    jitter_he,
)


def _marked(b: int, c: int, size: int = 16) -> torch.Tensor:
    x = torch.zeros(b, c, size, size)
    x[:, :, 2:5, 9:14] = 1.0  # asymmetric block: any flip / rotation moves it
    return x


def _centroid(x: torch.Tensor) -> torch.Tensor:
    """[B, 2] centre of mass of the first channel."""
    m = x[:, 0]
    ys, xs = torch.meshgrid(torch.arange(m.shape[1]), torch.arange(m.shape[2]), indexing="ij")
    tot = m.sum(dim=(1, 2))
    return torch.stack([(m * ys).sum(dim=(1, 2)) / tot, (m * xs).sum(dim=(1, 2)) / tot], 1)


def _identity_jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x


def test_d4_without_crop_is_exact_permutation():
    x = torch.rand(32, 3, 12, 12)
    y = apply_geometry(x, draw_geometry(32, torch.Generator().manual_seed(0), crop_scale=(1.0, 1.0)))
    for i in range(32):  # each output is one of the 8 dihedral images of its input, exactly
        cands = [torch.rot90(x[i], k, (1, 2)) for k in range(4)]
        cands += [torch.rot90(x[i].flip(2), k, (1, 2)) for k in range(4)]
        assert any(torch.allclose(y[i], c, atol=1e-5) for c in cands)


def test_branches_draw_independent_geometry():
    a, b = _marked(64, 3), _marked(64, 4)
    gen = torch.Generator().manual_seed(1)
    va, vb = augment_pair(a, b, _identity_jitter, _identity_jitter, gen, shared_geometry=False)
    moved = (_centroid(va) - _centroid(vb)).abs().sum(1) > 0.5
    # 8 orientations x random crops: the two branches almost never agree
    assert moved.float().mean() > 0.7
    gen = torch.Generator().manual_seed(1)
    va, vb = augment_pair(a, b, _identity_jitter, _identity_jitter, gen, shared_geometry=True)
    torch.testing.assert_close(_centroid(va), _centroid(vb))


def test_photometric_jitter_is_independent_per_branch_and_seeded():
    x = torch.full((8, 3, 8, 8), 0.6)
    gen = torch.Generator().manual_seed(2)
    va, vb = augment_pair(x, x, jitter_he, jitter_he, gen, shared_geometry=True)
    assert not torch.allclose(va, vb)  # same input, same geometry, different colours
    gen = torch.Generator().manual_seed(2)
    va2, vb2 = augment_pair(x, x, jitter_he, jitter_he, gen, shared_geometry=True)
    torch.testing.assert_close(va, va2)
    torch.testing.assert_close(vb, vb2)
    assert va.min() >= 0 and va.max() <= 1


def test_channel_dropout_keeps_a_channel():
    x = torch.ones(256, 4, 4, 4)
    y = jitter_dense(x, torch.Generator().manual_seed(3), drop_p=0.9, noise_p=0.0)
    alive = (y.amax(dim=(2, 3)) > 0).sum(1)
    assert (alive >= 1).all()
    assert (alive < 4).any()  # some channels were dropped
