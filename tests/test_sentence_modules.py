"""SentenceEncoder on sentence-transformers directories of every module layout a BERT model
uses, each compared with ``SentenceTransformer(dir).encode`` on the same texts."""

import json

import numpy as np
import pytest
import torch

from bertfast.sentence import SentenceEncoder
from tests.sentence_fixtures import sentence_transformers_dir

st = pytest.importorskip("sentence_transformers")
st_modules = st.sentence_transformer.modules

LONG = "The quick brown fox jumps over the lazy dog again and again. " * 25  # ~300 tokens
TEXTS = [
    "A man is eating food.",
    "Hello World, THIS is Cased Text",
    "x",
    "",
    LONG,
    "Ein Mann isst.",
]


def cosine_to_reference(path, texts=TEXTS, **encode_kwargs):
    """(ours, reference, min cosine) for the same directory and encode arguments."""
    reference = st.SentenceTransformer(str(path), device="cpu").encode(texts, **encode_kwargs)
    ours = SentenceEncoder.from_pretrained(path, backend="torch").encode(texts, **encode_kwargs)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
    assert ours.shape == reference.shape
    cosine = torch.nn.functional.cosine_similarity(
        torch.from_numpy(ours), torch.from_numpy(reference), dim=-1
    )
    return ours, reference, cosine.min().item()


def assert_matches(path, **encode_kwargs):
    ours, reference, cosine = cosine_to_reference(path, **encode_kwargs)
    assert cosine >= 0.99999, cosine
    assert np.abs(ours - reference).max() < 1e-5


LAYOUTS = {
    "dense-384-to-128-shape": dict(after_pooling=lambda: [st_modules.Dense(32, 8)]),
    "dense-tanh-normalize": dict(
        after_pooling=lambda: [st_modules.Dense(32, 32), st_modules.Normalize()]
    ),
    "dense-identity-residual": dict(
        after_pooling=lambda: [
            st_modules.Dense(32, 16, activation_function=torch.nn.Identity(), use_residual=True)
        ]
    ),
    "two-dense-gelu-dropout": dict(
        after_pooling=lambda: [
            st_modules.Dense(32, 24, activation_function=torch.nn.GELU()),
            st_modules.Dropout(0.5),
            st_modules.Dense(24, 12, bias=False),
        ]
    ),
    "layernorm-dense-normalize": dict(
        after_pooling=lambda: [
            st_modules.LayerNorm(32),
            st_modules.Dense(32, 16),
            st_modules.Normalize(),
        ]
    ),
    "cls": dict(pooling_mode="cls"),
    "max": dict(pooling_mode="max"),
    "mean_sqrt_len_tokens": dict(pooling_mode="mean_sqrt_len_tokens"),
    "weightedmean": dict(pooling_mode="weightedmean"),
    "lasttoken": dict(pooling_mode="lasttoken"),
    "cls+max+mean concatenated": dict(pooling_mode=("cls", "max", "mean")),
    "default-prompt": dict(prompts={"query": "query: "}, default_prompt_name="query"),
    "prompt-excluded-mean": dict(
        include_prompt=False, prompts={"q": "query: "}, default_prompt_name="q"
    ),
    "prompt-excluded-cls": dict(
        pooling_mode="cls",
        include_prompt=False,
        prompts={"q": "a longer prompt: "},
        default_prompt_name="q",
    ),
    "prompt-excluded-weightedmean": dict(
        pooling_mode="weightedmean",
        include_prompt=False,
        prompts={"q": "query: "},
        default_prompt_name="q",
    ),
    "prompt-excluded-lasttoken": dict(
        pooling_mode="lasttoken",
        include_prompt=False,
        prompts={"q": "query: "},
        default_prompt_name="q",
    ),
    "do_lower_case-on-cased-tokenizer": dict(cased=True, do_lower_case=True),
    "max_seq_length-128": dict(max_seq_length=128),
    "tokenizer-model_max_length-20": dict(model_max_length=20),
    "max_seq_length-wins-over-tokenizer": dict(max_seq_length=40, model_max_length=20),
}


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory, minilm_dir):
    made = {}

    def make(name):
        if name not in made:
            kwargs = dict(LAYOUTS[name])
            if "after_pooling" in kwargs:
                kwargs["after_pooling"] = kwargs["after_pooling"]()
            path = tmp_path_factory.mktemp("st") / "model"
            made[name] = sentence_transformers_dir(path, minilm_dir, **kwargs)
        return made[name]

    return make


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_equals_sentence_transformers(layout_dir, name):
    assert_matches(layout_dir(name))


def test_dense_sets_the_width(layout_dir):
    encoder = SentenceEncoder.from_pretrained(layout_dir("dense-384-to-128-shape"), backend="torch")
    assert encoder.encode("one text").shape == (8,)
    assert encoder.get_sentence_embedding_dimension() == 8


@pytest.mark.parametrize(
    "kwargs", [{"prompt_name": "query"}, {"prompt": "passage: "}, {"prompt": ""}]
)
def test_prompt_arguments(layout_dir, kwargs):
    path = layout_dir("prompt-excluded-mean")
    assert_matches(path, **kwargs)


def test_unknown_prompt_name(layout_dir):
    encoder = SentenceEncoder.from_pretrained(layout_dir("default-prompt"), backend="torch")
    with pytest.raises(ValueError, match="prompt_name 'nope' is not among the prompts"):
        encoder.encode("x", prompt_name="nope")


@pytest.mark.parametrize("normalize_embeddings", [False, True])
@pytest.mark.parametrize("name", ["dense-tanh-normalize", "dense-identity-residual"])
def test_normalize_embeddings_flag(layout_dir, name, normalize_embeddings):
    """A Normalize module always runs; the flag normalises once more, as there."""
    ours, _, _ = cosine_to_reference(layout_dir(name), normalize_embeddings=normalize_embeddings)
    assert_matches(layout_dir(name), normalize_embeddings=normalize_embeddings)
    unit = name.endswith("normalize") or normalize_embeddings
    norms = np.linalg.norm(ours, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == unit, norms


def test_truncation_length(layout_dir):
    encoder = SentenceEncoder.from_pretrained(layout_dir("max_seq_length-128"), backend="torch")
    assert encoder.max_seq_length == 128
    encoder = SentenceEncoder.from_pretrained(
        layout_dir("tokenizer-model_max_length-20"), backend="torch"
    )
    assert encoder.max_seq_length == 20


def test_pooling_without_config_is_refused(layout_dir, tmp_path):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(layout_dir("cls"), path)
    shutil.rmtree(path / "1_Pooling")
    with pytest.raises(TypeError):  # sentence-transformers' refusal
        st.SentenceTransformer(str(path), device="cpu")
    with pytest.raises(FileNotFoundError, match="Pooling module .* without its config.json"):
        SentenceEncoder.from_pretrained(path, backend="torch")


@pytest.mark.parametrize(
    "module_type",
    [
        "sentence_transformers.models.WeightedLayerPooling",
        "sentence_transformers.models.LSTM",
        "sentence_transformers.models.CNN",
    ],
)
def test_unsupported_module_is_refused_by_name(layout_dir, tmp_path, module_type):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(layout_dir("cls"), path)
    entries = json.loads((path / "modules.json").read_text())
    entries.append({"idx": 2, "name": "2", "path": "2_X", "type": module_type})
    (path / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=f"module type .*{module_type}.* is not supported"):
        SentenceEncoder.from_pretrained(path, backend="torch")


@pytest.mark.parametrize(
    "file, content, match",
    [
        ("modules.json", "[{", "modules.json: not valid JSON"),
        ("modules.json", '{"a": 1}', "modules.json: expected a list"),
        ("1_Pooling/config.json", "{", "config.json: not valid JSON"),
        ("sentence_bert_config.json", '{"max_seq_length": "128"}', "max_seq_length must be an int"),
        ("config_sentence_transformers.json", "nope", "config_sentence_transformers.json: not"),
    ],
)
def test_malformed_files_name_the_file(layout_dir, tmp_path, file, content, match):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(layout_dir("cls"), path)
    (path / file).write_text(content)
    with pytest.raises(ValueError, match=match):
        SentenceEncoder.from_pretrained(path, backend="torch")


def test_module_path_must_stay_inside(layout_dir, tmp_path):
    import shutil

    path = tmp_path / "model"
    shutil.copytree(layout_dir("cls"), path)
    entries = json.loads((path / "modules.json").read_text())
    entries[1]["path"] = "../../elsewhere"
    (path / "modules.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="leaves the model directory"):
        SentenceEncoder.from_pretrained(path, backend="torch")


def test_directory_saved_by_sentence_transformers_6_with_do_lower_case(tmp_path, minilm_dir):
    """sentence-transformers 6 bakes do_lower_case into the saved tokenizer.json, which
    transformers' BertTokenizer then ignores on loading: follow what it computes."""
    from tests.sentence_fixtures import tiny_bert_dir

    bert = tiny_bert_dir(tmp_path / "bert", minilm_dir, cased=True)
    transformer = st_modules.Transformer(str(bert), do_lower_case=True, max_seq_length=64)
    model = st.SentenceTransformer(modules=[transformer, st_modules.Pooling(32)], device="cpu")
    model.save(str(tmp_path / "model"))
    assert_matches(tmp_path / "model")


def test_transformer_in_its_own_folder(layout_dir, tmp_path):
    """Older directories keep the Transformer in a subfolder named by modules.json."""
    import shutil

    path = tmp_path / "model"
    shutil.copytree(layout_dir("dense-tanh-normalize"), path)
    (path / "0_Transformer").mkdir()
    for item in path.iterdir():
        if item.is_file() and item.name not in (
            "modules.json",
            "config_sentence_transformers.json",
        ):
            item.rename(path / "0_Transformer" / item.name)
    entries = json.loads((path / "modules.json").read_text())
    entries[0]["path"] = "0_Transformer"
    (path / "modules.json").write_text(json.dumps(entries))
    assert_matches(path)
