import pytest
import torch

from interprune.weights.resample import select_indices
from interprune.weights.transfer import transfer

from .conftest import tiny_detr


def outputs(model, images):
    with torch.no_grad():
        out = model(pixel_values=images)
    return out.logits, out.pred_boxes


def test_same_size_transfer_reproduces_the_source_exactly(detr, images):
    target = tiny_detr()
    torch.manual_seed(123)
    target = type(detr)(detr.config).eval()  # fresh weights and default batch-norm statistics
    report = transfer(detr, target, "area")
    assert report.counts() == {"copied": len(detr.state_dict()), "resampled": 0, "initialised": 0}
    for got, want in zip(outputs(target, images), outputs(detr, images)):
        assert torch.equal(got, want)


def test_copying_parameters_only_does_not_reproduce_the_source(detr, images):
    """The paper's 'weight transfer': parameters copied, frozen batch-norm statistics (buffers) lost."""
    target = type(detr)(detr.config).eval()
    with torch.no_grad():
        for (_, src), (_, dst) in zip(detr.named_parameters(), target.named_parameters()):
            dst.copy_(src)
    assert not torch.allclose(outputs(target, images)[0], outputs(detr, images)[0], atol=1e-3)
    buffers = [r for r in transfer(detr, target, "area").tensors if r.kind == "buffer"]
    assert buffers and all(r.action == "copied" for r in buffers)


def test_select_keeps_the_same_units_across_tensors_that_share_a_dimension(detr):
    small = tiny_detr(d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32)
    report = transfer(detr, small, "select")
    d, f = torch.tensor(report.choices["residual"]), select_indices(64, 32)
    assert d.tolist() == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29]  # kept with the sine encoding
    src, dst = detr.state_dict(), small.state_dict()
    layer = "model.encoder.layers.1."
    assert torch.equal(dst[layer + "mlp.fc1.weight"], src[layer + "mlp.fc1.weight"][f][:, d])
    assert torch.equal(dst[layer + "mlp.fc1.bias"], src[layer + "mlp.fc1.bias"][f])
    assert torch.equal(dst[layer + "mlp.fc2.weight"], src[layer + "mlp.fc2.weight"][d][:, f])
    assert torch.equal(dst[layer + "final_layer_norm.weight"], src[layer + "final_layer_norm.weight"][d])
    assert report.counts()["initialised"] == 0


def test_random_keeps_the_targets_initialisation_for_resized_tensors(detr):
    small = tiny_detr(d_model=16, encoder_ffn_dim=32, decoder_ffn_dim=32)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    report = transfer(detr, small, "random")
    after, src = small.state_dict(), detr.state_dict()
    for record in report.tensors:
        expected = src[record.name] if record.action == "copied" else before[record.name]
        assert torch.equal(after[record.name], expected), record.name
    assert report.counts()["initialised"] > 80 and report.counts()["resampled"] == 0


def test_reinit_pattern_keeps_matching_tensors_fresh(detr):
    target = type(detr)(detr.config).eval()
    fresh = target.state_dict()["model.encoder.layers.0.mlp.fc1.weight"].clone()
    report = transfer(detr, target, "area", reinit=r"^(?!model\.backbone)")
    actions = {r.name: r.action for r in report.tensors}
    assert actions["model.encoder.layers.0.mlp.fc1.weight"] == "initialised"
    assert all(a == "copied" for n, a in actions.items() if n.startswith("model.backbone"))
    assert torch.equal(target.state_dict()["model.encoder.layers.0.mlp.fc1.weight"], fresh)


def test_fewer_layers_keep_the_first_ones_and_report_the_dropped(detr):
    shallow = tiny_detr(encoder_layers=1)
    report = transfer(detr, shallow, "area")
    assert any(n.startswith("model.encoder.layers.1.") for n in report.dropped)
    assert torch.equal(shallow.state_dict()["model.encoder.layers.0.mlp.fc1.weight"],
                       detr.state_dict()["model.encoder.layers.0.mlp.fc1.weight"])
    assert report.target_parameters < report.source_parameters


def test_unknown_method_is_refused(detr):
    with pytest.raises(ValueError, match="unknown method"):
        transfer(detr, tiny_detr(), "cubic")
