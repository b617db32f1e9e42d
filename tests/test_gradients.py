import pytest
import torch
import torch.nn.functional as F

from bnprivacy.gradients import per_sample_grad_norms
from bnprivacy.models import build_model


def model_and_batch(norm, arch="cnn", batch=12, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, norm, 4, (1, 8, 8), 5).double()
    x = torch.randn(batch, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (batch,))
    return model, x, y


@pytest.mark.parametrize("norm", ["none", "group", "layer"])
def test_without_batchnorm_the_three_definitions_agree(norm):
    model, x, y = model_and_batch(norm)
    own = per_sample_grad_norms(model, x, y, "own")
    assert torch.allclose(own, per_sample_grad_norms(model, x, y, "eval"), atol=1e-10)
    assert torch.allclose(own, per_sample_grad_norms(model, x, y, "loo"), atol=1e-8)


@pytest.mark.parametrize("arch,norm", [("cnn", "none"), ("cnn", "group"), ("resnet18", "layer")])
def test_opacus_hooks_give_the_per_sample_norms_of_vmap(arch, norm):
    model, x, y = model_and_batch(norm, arch)
    hooks = per_sample_grad_norms(model, x, y, "own", method="hooks")
    assert torch.allclose(hooks, per_sample_grad_norms(model, x, y, "own", method="vmap"), rtol=1e-9)
    assert torch.allclose(hooks, naive_own_norms(model, x, y), rtol=1e-9)


def test_a_method_that_does_not_apply_to_the_batch_is_refused():
    model, x, y = model_and_batch("batch")
    with pytest.raises(ValueError, match="does not apply to a BatchNorm batch.*allowed values: auto, jacobian, loop"):
        per_sample_grad_norms(model, x, y, "own", method="hooks")
    with pytest.raises(ValueError, match="does not apply to a model with BatchNorm"):
        per_sample_grad_norms(model, x, y, "eval", method="hooks")
    model, x, y = model_and_batch("none")
    with pytest.raises(ValueError, match="does not apply to a batch without coupling.*vmap, hooks"):
        per_sample_grad_norms(model, x, y, "own", method="loop")


def naive_own_norms(model, x, y):
    """Definition (a) by hand: one backward per loss term of one shared forward pass."""
    model = model.train()
    params = list(model.parameters())
    losses = F.cross_entropy(model(x), y, reduction="none")
    return torch.stack([torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(l, params, retain_graph=True)))
                        for l in losses])


@pytest.mark.parametrize("method", ["jacobian", "loop"])
def test_own_gradient_under_batchnorm_matches_a_naive_loop(method):
    model, x, y = model_and_batch("batch")
    got = per_sample_grad_norms(model, x, y, "own", method=method)
    expected = naive_own_norms(model, x, y)  # updates the running stats of this model: compare first
    assert torch.allclose(got, expected, atol=1e-10)


def test_measuring_gradients_leaves_the_model_untouched():
    model, x, y = model_and_batch("batch")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for definition in ("own", "loo", "eval"):
        per_sample_grad_norms(model, x, y, definition)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_batchnorm_couples_the_batch_so_the_definitions_differ():
    model, x, y = model_and_batch("batch")
    own = per_sample_grad_norms(model, x, y, "own")
    loo = per_sample_grad_norms(model, x, y, "loo")
    evaluated = per_sample_grad_norms(model, x, y, "eval")
    assert not torch.allclose(own, loo, rtol=1e-3) and not torch.allclose(own, evaluated, rtol=1e-3)


def test_own_gradients_sum_to_the_batch_gradient_under_batchnorm():
    from torch.func import functional_call, jacrev

    model, x, y = model_and_batch("batch")
    frozen = per_sample_grad_norms.__globals__["_frozen_copy"](model, True)
    params = {k: v.detach() for k, v in frozen.named_parameters()}
    buffers = {k: v.detach() for k, v in frozen.named_buffers()}
    losses = lambda p: F.cross_entropy(functional_call(frozen, (p, buffers), (x,)), y, reduction="none")  # noqa: E731
    jac = jacrev(losses)(params)
    batch = torch.func.grad(lambda p: losses(p).mean())(params)
    for name in params:
        assert torch.allclose(jac[name].mean(0), batch[name], atol=1e-12)


def test_own_gradient_without_batchnorm_matches_opacus():
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = build_model("mlp", "none", 16, (1, 8, 8), 5)
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 5, (10,))
    ours = per_sample_grad_norms(model, x, y, "own")
    reference = build_model("mlp", "none", 16, (1, 8, 8), 5)
    reference.load_state_dict(model.state_dict())
    for module in reference.modules():  # Opacus's backward hooks cannot see through in-place ReLUs
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    wrapped = GradSampleModule(reference, loss_reduction="sum")
    # Opacus accumulates per-sample gradients of the summed loss: the per-sample loss gradients.
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    theirs = torch.sqrt(sum(p.grad_sample.flatten(1).pow(2).sum(1) for p in wrapped.parameters()))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bad_input_is_explained():
    model, x, y = model_and_batch("batch")
    with pytest.raises(ValueError, match="batch of one sample has no batch statistics"):
        per_sample_grad_norms(model, x[:1], y[:1], "own")
    per_sample_grad_norms(model, x[:1], y[:1], "eval")  # running statistics: fine
    with pytest.raises(ValueError, match=r"sample index\(es\) \[12\] outside the batch"):
        per_sample_grad_norms(model, x, y, "own", samples=[3, 12])
    with pytest.raises(ValueError, match="definition='influence'"):
        per_sample_grad_norms(model, x, y, "influence")


def test_samples_select_a_subset_consistently():
    model, x, y = model_and_batch("batch")
    everything = per_sample_grad_norms(model, x, y, "loo")
    assert torch.allclose(per_sample_grad_norms(model, x, y, "loo", samples=[2, 5]), everything[[2, 5]])
    own = per_sample_grad_norms(model, x, y, "own")
    assert torch.allclose(per_sample_grad_norms(model, x, y, "own", samples=[7]), own[[7]])


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_probe_norms_equal_the_definitions_on_the_batch_with_the_probe(norm):
    from bnprivacy.gradients import probe_norms

    model, x, y = model_and_batch(norm, batch=10)
    base_x, base_y, px, py = x[:7], y[:7], x[7:], y[7:]
    own, loo = probe_norms(model, base_x, base_y, px, py, chunk=2)
    for k in range(3):
        bx, by = torch.cat([base_x, px[k:k + 1]]), torch.cat([base_y, py[k:k + 1]])
        assert torch.allclose(own[k], per_sample_grad_norms(model, bx, by, "own", samples=[7])[0], atol=1e-10)
        assert torch.allclose(loo[k], per_sample_grad_norms(model, bx, by, "loo", samples=[7])[0], atol=1e-10)
