"""Classifier creation (offline weights), the model directory, and val preprocessing."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from pipeline.core.errors import ModelUnavailable
from pipeline.models.classifier import create_classifier, load_classifier, model_meta, preprocess, save_classifier
from pipeline.models.pretrained import package_weights_file


def test_lite2_package_weights_map_onto_timm(tmp_path):
    model, info = create_classifier("tf_efficientnet_lite2", 4, True, drop_rate=0.3)
    assert info["random_init"] is False and info["weights_source"] == "package"
    src = torch.load(package_weights_file("tf_efficientnet_lite2"), map_location="cpu", weights_only=True)
    assert torch.equal(src["_conv_stem.weight"], model.state_dict()["conv_stem.weight"])
    assert model.get_classifier().out_features == 4 and model.drop_rate == 0.3

    meta = model_meta("tf_efficientnet_lite2", ["a", "b", "c", "d"], 48, 56, (0.5,) * 3, (0.5,) * 3, info)
    save_classifier(model, meta, tmp_path / "m")
    loaded, back = load_classifier(tmp_path / "m")
    assert back["class_names"] == ["a", "b", "c", "d"] and back["temperature"] == 1.0 and back["threshold"] is None
    x = preprocess([Image.new("L", (70, 50), 90), Image.new("RGB", (50, 80), (10, 200, 30))], back)
    assert x.shape == (2, 3, 48, 48)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))


def test_no_weights_offline_is_model_unavailable_unless_random_allowed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")
    with pytest.raises(ModelUnavailable, match="allow_random_init"):
        create_classifier("mobilenetv2_100", 3, True)
    model, info = create_classifier("mobilenetv2_100", 3, True, allow_random_init=True, seed=1)
    again, _ = create_classifier("mobilenetv2_100", 3, True, allow_random_init=True, seed=1)
    assert info["random_init"] is True and info["weights_source"] == "random"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
