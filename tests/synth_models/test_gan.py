"""The GAN generator's sampling path computes the same function as its training forward."""

import torch

from synth_models.gan import Generator


def test_inference_path_equals_the_module_forward() -> None:
    torch.manual_seed(0)
    generator = Generator(noise_dim=16, cond_dim=7, data_dim=11, hidden=(32, 24))
    generator.train()
    for _ in range(5):  # non-trivial batch-norm running statistics to fold
        generator(torch.randn(64, 16), torch.randn(64, 7))
    generator.eval()
    noise, cond = torch.randn(300, 16), torch.randn(300, 7)
    reference = generator.net(torch.cat([noise, cond], dim=1))
    with torch.no_grad():
        fast = generator(noise, cond)
    assert torch.allclose(fast, reference, atol=1e-5)
    assert not torch.equal(generator._infer(noise, cond), torch.zeros_like(reference))


def test_training_forward_is_untouched() -> None:
    generator = Generator(noise_dim=4, cond_dim=2, data_dim=3, hidden=(8,))
    generator.train()
    out = generator(torch.randn(10, 4), torch.randn(10, 2))
    assert out.requires_grad  # the autograd path (batch statistics), not the folded one
