"""The domain registry: names, presets, recorded parameter counts, refusing duplicates."""

from __future__ import annotations

import pytest

from edgevision.domains import BACKBONES, get_domain, list_domains, register_domain
from edgevision.errors import UsageError


def test_required_domains_exist_with_input_sizes() -> None:
    sizes = {d.name: d.input_size for d in list_domains()}
    assert sizes["general-compact"] == 224 and sizes["general-compact-s1"] == 260
    assert sizes["general-compact-mobilenetv2"] == 224
    for preset in ("landmarks-compact", "retail-compact", "food-compact"):
        assert get_domain(preset).preset_of == "general-compact"
        assert get_domain(preset).backbone is get_domain("general-compact").backbone


def test_unknown_domain_suggests() -> None:
    with pytest.raises(UsageError, match="did you mean 'food-compact'"):
        get_domain("food-compakt")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_domain(get_domain("general-compact"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_recorded_params_match_the_built_model(name: str) -> None:
    backbone = BACKBONES[name]
    model = backbone.build(pretrained=False)
    assert model.count_params() == backbone.params
    assert model.output_shape == (None, backbone.feature_dim)
    assert model.input_shape == (None, backbone.input_size, backbone.input_size, 3)
