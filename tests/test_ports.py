"""minidiff.nets.ports: hookable ports — add residuals, capture features, remove cleanly."""
import pytest
import torch
from torch import nn

from minidiff.nets.ports import Port, add_residuals, capture, find_ports, resolve_target


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.pa = nn.Linear(3, 4), Port("a", 4)
        self.b, self.pb = nn.Linear(4, 2), Port("b", 2)

    def forward(self, x):
        return self.pb(self.b(self.pa(self.a(x))))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return Tiny()


def test_find_ports_in_order(model):
    assert list(find_ports(model)) == ["a", "b"]


def test_residual_changes_output_and_is_removed_cleanly(model):
    x = torch.randn(5, 3)
    before = model(x)
    r = torch.randn(5, 4)
    with add_residuals(model, {"a": r}):
        steered = model(x)
    # adding r after `a` equals feeding a(x) + r through the rest by hand
    assert torch.allclose(steered, model.b(model.a(x) + r))
    assert torch.equal(model(x), before)                       # bit-identical after removal
    assert not model.pa._forward_hooks


def test_submodule_targets_and_callables(model):
    x = torch.randn(2, 3)
    with add_residuals(model, {"b": lambda out: 2 * out}):    # a callable rewrites the output
        assert torch.allclose(model(x), 2 * model.b(model.a(x)))
    with add_residuals(model, {"a": torch.ones(1, 4)}):       # a plain submodule name works too (diffusers)
        assert torch.allclose(model(x), model.b(model.a(x) + 1))


def test_capture_reads_features(model):
    x = torch.randn(2, 3)
    with capture(model) as feats:
        out = model(x)
    assert set(feats) == {"a", "b"} and torch.equal(feats["b"], out)
    assert not model.pa._forward_hooks


def test_errors(model):
    with pytest.raises(KeyError, match="unknown port 'c'"):
        add_residuals(model, {"c": torch.zeros(1)})
    assert not model.pa._forward_hooks                          # nothing left behind by the failed call
    with add_residuals(model, {"a": torch.zeros(5, 3)}):
        with pytest.raises(ValueError, match=r"residual for port 'a' must have shape \(B, 4\)"):
            model(torch.randn(5, 3))
    with pytest.raises(TypeError, match="tensor or a callable"):
        add_residuals(model, {"a": 1.0})
    with pytest.raises(TypeError, match="mapping"):
        add_residuals(model, [("a", torch.zeros(1))])


def test_duplicate_names_non_str_targets_and_tuple_outputs():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q = Port("a", 2), Port("a", 2)

    with pytest.raises(ValueError, match="two ports share the name 'a'"):
        find_ports(Twice())
    with pytest.raises(TypeError, match="a port target must be a str"):
        resolve_target(Tiny(), 0)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(2, 2)

        def forward(self, x):
            return self.inner(x), x

    m = Pair()
    with add_residuals(m, {"": torch.ones(2)}):                # the root module: output is a tuple
        with pytest.raises(TypeError, match="pass a callable"):
            m(torch.zeros(1, 2))
    with add_residuals(m, {"": lambda out: (out[0] + 1, out[1])}):
        y, x = m(torch.zeros(1, 2))
    assert torch.allclose(y, m.inner(torch.zeros(1, 2)) + 1)


def test_resolve_target_reuses_a_port_table(model):
    ports = find_ports(model)
    assert resolve_target(model, "b", ports) is model.pb
    assert resolve_target(model, "a", {}) is model.a       # not in the given table: falls back to submodules


def test_hooks_stack_in_registration_order(model):
    """A capture entered after add_residuals sees the steered feature; entered before, the plain one."""
    x, r = torch.randn(2, 3), torch.randn(2, 4)
    with add_residuals(model, {"a": r}), capture(model, ["a"]) as after:
        model(x)
    with capture(model, ["a"]) as before, add_residuals(model, {"a": r}):
        model(x)
    assert torch.allclose(after["a"], before["a"] + r)
    assert all(not m._forward_hooks for m in model.modules())
