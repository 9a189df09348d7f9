"""Export a run's pruned model: torch.export file and ONNX run in onnxruntime, matching PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoprune.cli import main
from autoprune.core.plan import PruningPlan
from autoprune.pipeline.artifacts import load_pruned, model_spec, save_pruned


@pytest.fixture(scope="module")
def run_dir(tiny_session, tmp_path_factory):
    """A run directory holding a channel-pruned model (as a search writes it)."""
    s = tiny_session
    plan = PruningPlan.from_ratios(s.graph, 0.5)
    pruned = s.evaluator().prune(plan)
    out = tmp_path_factory.mktemp("run")
    save_pruned(out / "pruned_model.pt", pruned, model_spec(s.cfg, s.data, s.input_shape), plan, "channel")
    return out


def test_export_torch_loads_and_matches(run_dir, tiny_session):
    assert main(["export", str(run_dir), "--format", "torch"]) == 0
    exported = torch.export.load(str(run_dir / "pruned_model.pt2")).module()
    reference = load_pruned(run_dir / "pruned_model.pt")
    x = tiny_session.data.test.tensors[0][:7]
    with torch.no_grad():
        torch.testing.assert_close(exported(x), reference(x), rtol=0, atol=1e-5)
    n_exported = sum(p.numel() for p in exported.parameters())
    assert n_exported == sum(p.numel() for p in reference.parameters())
    assert n_exported < sum(p.numel() for p in tiny_session.model.parameters())  # physically smaller


def test_fold_bn_export_has_no_batchnorm_and_matches(run_dir, tiny_session, tmp_path):
    out = tmp_path / "folded.pt2"
    assert main(["export", str(run_dir), "--format", "torch", "--fold-bn", "--out", str(out)]) == 0
    exported = torch.export.load(str(out)).module()
    reference = load_pruned(run_dir / "pruned_model.pt").eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert not any("batch_norm" in str(n.target) for n in exported.graph.nodes)
    x = tiny_session.data.test.tensors[0][:7]
    with torch.no_grad():
        torch.testing.assert_close(exported(x), reference(x), rtol=1e-4, atol=1e-4)


def test_fold_bn_on_an_untraceable_model_is_a_clear_error():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    from autoprune.errors import AutopruneError
    from autoprune.pipeline.export import fold_batchnorm

    with pytest.raises(AutopruneError, match="not traceable by torch.fx"):
        fold_batchnorm(Branchy())


def test_export_onnx_matches_pytorch(run_dir, tiny_session, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = tiny_session.data.test.tensors[0][:5]
    (onnx_out,) = session.run(None, {"input": x.numpy()})
    reference = load_pruned(run_dir / "pruned_model.pt")
    with torch.no_grad():
        ref = reference(x).numpy()
    np.testing.assert_allclose(onnx_out, ref, atol=1e-4, rtol=0)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "torch"]) == 2
    assert "pruned_model.pt" in capsys.readouterr().err
