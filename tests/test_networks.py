"""Encoder and UNet: shapes at the image sizes users train on; the UNet actually uses its condition."""

from __future__ import annotations

import pytest
import torch

from causaldiffae.encoder import Encoder, downsampling_depth
from causaldiffae.unet import UNet, UNetConfig

SIZES = [(28, 1), (64, 3)]  # (image size, channels): MNIST-like and Pendulum/CelebA-like


@pytest.mark.parametrize("size, depth", [(4, 0), (5, 1), (8, 1), (16, 2), (28, 3), (64, 4), (96, 5)])
def test_downsampling_depth(size, depth):
    assert downsampling_depth(size) == depth


def test_downsampling_depth_rejects_tiny_images():
    with pytest.raises(ValueError, match="3"):
        downsampling_depth(3)


@pytest.mark.parametrize("size, channels", SIZES)
def test_encoder_shapes(size, channels):
    torch.manual_seed(0)
    enc = Encoder(size, channels, n_vars=4, latent_dim=5, base_channels=8)
    mu, logvar = enc(torch.rand(2, channels, size, size) * 2 - 1)
    assert mu.shape == (2, 4, 5)
    assert logvar.shape == (2, 4, 5)
    assert torch.isfinite(mu).all() and torch.isfinite(logvar).all()


def test_encoder_output_depends_on_the_image():
    torch.manual_seed(0)
    enc = Encoder(28, 1, n_vars=2, latent_dim=3, base_channels=8)
    x = torch.rand(2, 1, 28, 28)
    mu, _ = enc(x)
    assert not torch.allclose(mu[0], mu[1])


def _unet(channels: int) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(channels, cond_dim=6, base_channels=8, channel_mult=(1, 2, 2), attention_levels=(2,)))


def _randomise(module: torch.nn.Module) -> None:
    """Perturb every parameter: the head and every residual branch are zero-initialised, so at init the UNet
    returns zeros and ignores its condition whatever it is."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("size, channels", SIZES)
def test_unet_output_shape_equals_input(size, channels):
    net = _unet(channels)
    _randomise(net)
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 7]), torch.randn(2, 6))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_starts_at_zero():
    net = _unet(1)
    out = net(torch.randn(2, 1, 28, 28), torch.tensor([3, 5]), torch.randn(2, 6))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("size, channels", SIZES)
def test_unet_uses_condition_and_timestep(size, channels):
    net = _unet(channels).eval()
    _randomise(net)
    x, t = torch.randn(2, channels, size, size), torch.tensor([10, 10])
    cond = torch.randn(2, 6)
    with torch.no_grad():
        base = net(x, t, cond)
        other_cond = net(x, t, cond + 1.0)
        other_t = net(x, torch.tensor([500, 500]), cond)
    assert not torch.allclose(base, other_cond, atol=1e-4)
    assert not torch.allclose(base, other_t, atol=1e-4)


def test_unet_condition_acts_per_image():
    net = _unet(1).eval()
    _randomise(net)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 10])
    cond = torch.randn(2, 6)
    cond2 = cond.clone()
    cond2[1] += 1.0
    with torch.no_grad():
        a, b = net(x, t, cond), net(x, t, cond2)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1], atol=1e-4)


def test_unet_condition_matters_after_one_training_step():
    """From the real zero init: one optimiser step must make the output depend on the condition."""
    net = _unet(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([10, 20, 30, 40])
    cond = torch.randn(4, 6)
    for _ in range(2):  # the first step only moves the zero head; the second reaches the residual branches
        loss = (net(x, t, cond) - torch.randn_like(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(net(x, t, cond), net(x, t, cond + 1.0), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"channel_mult": ()}, {"attention_levels": (3,)}])
def test_unet_rejects_bad_architecture(kwargs):
    with pytest.raises(ValueError):
        UNet(UNetConfig(1, 4, base_channels=8, **{"channel_mult": (1, 2, 2), **kwargs}))
