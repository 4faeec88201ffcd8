import pytest
import torch
import yaml

from polymodal.families.fourm.masking.alphas import MIN_ALPHA, DirichletMixture
from polymodal.families.fourm.modalities import ModalityRegistry

MOD7 = ["rgb@224", "tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224", "tok_clip@224", "caption", "det"]
SIMPLE = """
rgb@224:        {input_alphas: [1000.0, 0.5], target_alphas: [0., 0.]}
tok_rgb@224:    {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5]}
tok_depth@224:  {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5]}
tok_semseg@224: {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5]}
tok_normal@224: {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5]}
tok_clip@224:   {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5]}
caption:        {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5], keep: ['random', 'random']}
det:            {input_alphas: [0., 0.5],     target_alphas: [0.5, 0.5], keep: ['random', 'random']}
"""
IMAGE = {"input_alphas": [0.01, 0.1, 1.0, 10.0, 0.0, 0.05], "target_alphas": [0.01, 0.1, 1.0, 10.0, 0.5, 0.5]}
WEIGHTED = {
    "sampling_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0],
    "alphas_mixture": {
        "rgb@224": {"input_alphas": [0.01, 0.1, 1.0, 10.0, 1000.0, 0.05], "target_alphas": [0.0] * 6},
        "caption": {
            "input_alphas": [0.01, 0.1, 1.0, 10.0, 0.0, 5.0],
            "target_alphas": [0.01, 0.1, 1.0, 10.0, 0.5, 0.5],
            "keep": ["random", "random", "random", "random", "random", "all"],
        },
        "det": {**IMAGE, "keep": ["random"] * 5 + ["binary"]},
        **{name: IMAGE for name in MOD7[1:6]},
    },
}


@pytest.fixture(scope="module")
def mod7() -> ModalityRegistry:
    return ModalityRegistry.from_config(MOD7)


def test_simple_form_from_yaml(mod7, tmp_path):
    path = tmp_path / "alphas.yaml"
    path.write_text(SIMPLE)
    mixture = DirichletMixture.from_yaml(path, mod7)
    assert mixture.modalities == tuple(sorted(MOD7)) and mixture.num_components == 2
    assert mixture.sampling_weights is None
    concentration = mixture.input_concentration()
    rgb = mixture.modalities.index("rgb@224")
    assert concentration.shape == (2, 8) and concentration.dtype == torch.float64
    assert concentration[0, rgb] == 1000.0 and concentration[1, rgb] == 0.5
    assert concentration[0].sum() == pytest.approx(1000.0 + 7 * MIN_ALPHA)
    assert (mixture.target_concentration()[:, rgb] == MIN_ALPHA).all()
    assert mixture.keep_schemes("caption") == ("random", "random")


def test_weighted_form_from_yaml(mod7, tmp_path):
    path = tmp_path / "capbias.yaml"
    path.write_text(yaml.safe_dump(WEIGHTED))
    mixture = DirichletMixture.from_yaml(path, mod7)
    assert mixture.num_components == 6 and mixture.sampling_weights == (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)
    assert mixture.keep_schemes("caption")[5] == "all" and mixture.keep_schemes("det")[5] == "binary"
    caption = mixture.modalities.index("caption")
    assert mixture.input_concentration()[5, caption] == 5.0


def test_single_alpha_for_every_modality(mod7):
    mixture = DirichletMixture.single(mod7, "0.5", 1.0)
    assert mixture.num_components == 1
    assert (mixture.input_concentration() == 0.5).all() and (mixture.target_concentration() == 1.0).all()
    assert mixture.keep_schemes("det") == ("random",)


def test_keep_defaults_to_random_when_not_configured(mod7):
    config = yaml.safe_load(SIMPLE)
    del config["det"]["keep"]
    assert DirichletMixture.from_config(config, mod7).keep_schemes("det") == ("random", "random")


def _simple_with(**changes):
    config = yaml.safe_load(SIMPLE)
    for name, entry in changes.items():
        if entry is None:
            del config[name]
        else:
            config[name] = entry
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_simple_with(tok_sam_edge={"input_alphas": [1, 1], "target_alphas": [1, 1]}), r"\['tok_sam_edge'\].*not in"),
        (_simple_with(det=None), r"registry modalities \['det'\] have no alphas"),
        (_simple_with(det={"input_alphas": [1, 1, 1], "target_alphas": [1, 1]}), "det.*3 components, expected 2"),
        (_simple_with(det={"input_alphas": [1, 1], "target_alphas": [1]}), "target_alphas has 1 components"),
        (_simple_with(det={"input_alphas": [1, -0.5], "target_alphas": [1, 1]}), r"det.input_alphas\[1\].*>= 0"),
        (_simple_with(det={"input_alphas": [1, "x"], "target_alphas": [1, 1]}), "must be a number"),
        (_simple_with(det={"input_alphas": [1, 1], "target_alphas": [1, 1], "keep": ["random", "some"]}), "'some'"),
        (_simple_with(det={"input_alphas": [1, 1], "target_alphas": [1, 1], "keep": ["all"]}), "list of 2 schemes"),
        (_simple_with(det={"input_alphas": [1, 1]}), "lack 'target_alphas'"),
        (_simple_with(det={"input_alphas": [1, 1], "target_alphas": [1, 1], "alpha": 2}), r"unknown key\(s\)"),
        (
            _simple_with(**{"tok_rgb@224": {"input_alphas": [1, 1], "target_alphas": [1, 1], "keep": ["all", "all"]}}),
            "only sequence modalities have a keep",
        ),
        ({"alphas_mixture": yaml.safe_load(SIMPLE), "sampling_weights": [1.0]}, "sampling_weights must be a list of 2"),
        ({"alphas_mixture": yaml.safe_load(SIMPLE), "sampling_weights": [0, 0]}, "must not all be 0"),
        ({"alphas_mixture": yaml.safe_load(SIMPLE), "weights": [1, 1]}, r"unknown top-level key\(s\) \['weights'\]"),
    ],
)
def test_bad_configs_raise_naming_the_problem(mod7, config, message):
    with pytest.raises(ValueError, match=message):
        DirichletMixture.from_config(config, mod7)


def test_yaml_errors_name_the_file(mod7, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("caption: {input_alphas: [1], target_alphas: [1]}\n")
    with pytest.raises(ValueError, match="bad.yaml.*have no alphas"):
        DirichletMixture.from_yaml(path, mod7)
