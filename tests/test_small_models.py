import random

import numpy as np
import pytest
import torch

from trainables.models.small import build_small_model, load_vectors
from trainables.batching import collate
from trainables.text.vocab import PAD, UNK, VocabTextEncoder
from trainables.config import ModelConfig

ENCODER = VocabTextEncoder([PAD, UNK] + [f"t{i}" for i in range(10)], tokens="word", max_length=16)

CONFIGS = {
    "fasttext": dict(arch="fasttext"),
    "textcnn": dict(arch="textcnn", kernel_sizes=[2, 3, 5]),
    "textrnn-lstm-bi-2": dict(arch="textrnn", rnn_type="lstm", bidirectional=True, num_layers=2),
    "textrnn-gru-uni": dict(arch="textrnn", rnn_type="gru", bidirectional=False),
    "textrcnn": dict(arch="textrcnn", rnn_type="gru", bidirectional=True),
    "transformer": dict(arch="transformer", hidden_size=12, num_heads=2, num_layers=2),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine the threads' spin-waits
    make these tests an order of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**overrides):
    options = dict(
        kind="small", arch="textcnn", tokens="word", max_length=ENCODER.max_length, vocab_size=100, min_freq=1, embedding_dim=8,
        hidden_size=8, num_layers=1, num_filters=4, kernel_sizes=[2, 3], rnn_type="lstm", bidirectional=True,
        num_heads=2, pretrained_vectors=None, dropout=0.1, multi_sample_dropout=2, init="default",
    )
    return ModelConfig(**{**options, **overrides})


def build(name, **overrides):
    torch.manual_seed(0)
    return build_small_model(config(**{**CONFIGS[name], **overrides}), 2, ENCODER)


def batch(rows):
    b = collate(rows, None, ENCODER.pad_id)
    return b["input_ids"], b["attention_mask"]


def toy_problem(n=16):
    """Class 0 texts use ids 2..6, class 1 ids 7..11; lengths 1..8."""
    rng = random.Random(0)
    labels = [i % 2 for i in range(n)]
    rows = [[rng.randint(2 + 5 * y, 6 + 5 * y) for _ in range(rng.randint(1, 8))] for y in labels]
    return (*batch(rows), torch.tensor(labels))


def logits(model, input_ids, mask):
    model.eval()
    with torch.no_grad():
        return model(input_ids, mask)


ROWS = [[2, 3, 4, 5, 6, 7, 8], [9], [10, 11, 2], []]
every_arch = pytest.mark.parametrize("name", list(CONFIGS))


@every_arch
def test_loss_drops_on_separable_toy_problem(name):
    model = build(name)
    input_ids, mask, labels = toy_problem()
    loss = torch.nn.CrossEntropyLoss()
    before = loss(logits(model, input_ids, mask), labels).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(20):
        optimizer.zero_grad()
        loss(model(input_ids, mask), labels).backward()
        optimizer.step()
    after = loss(logits(model, input_ids, mask), labels).item()
    assert after < 0.5 * before


@every_arch
def test_trailing_padding_does_not_change_logits(name):
    model = build(name)
    input_ids, mask = batch(ROWS)
    padded_ids = torch.nn.functional.pad(input_ids, (0, 5), value=ENCODER.pad_id)
    padded_mask = torch.nn.functional.pad(mask, (0, 5), value=0)
    expected = logits(model, input_ids, mask)
    assert torch.isfinite(expected).all()  # the empty row too
    torch.testing.assert_close(logits(model, padded_ids, padded_mask), expected, atol=1e-5, rtol=1e-5)


@every_arch
def test_state_dict_rebuild_gives_same_logits(name):
    model = build(name)
    input_ids, mask = batch(ROWS)
    torch.manual_seed(1)  # a different random init, overwritten by the state dict
    rebuilt = build_small_model(config(**CONFIGS[name]), 2, ENCODER)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(rebuilt, input_ids, mask), logits(model, input_ids, mask), atol=0, rtol=0)


@every_arch
def test_onnx_export_matches_torch_at_two_lengths(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = build(name).eval()
    path = tmp_path / "model.onnx"
    dynamic = {0: "batch", 1: "length"}
    torch.onnx.export(
        model, batch([[2, 3, 4, 5, 6, 7], [8, 9]]), str(path), dynamo=False, opset_version=17,
        input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for rows in ([[2, 3], [4], [5, 6]], [[2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 4, 4]]):
        input_ids, mask = batch(rows)
        (got,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})
        assert np.abs(got - logits(model, input_ids, mask).numpy()).max() < 1e-4


def vector_line(token, value, dim=8):
    return f"{token} " + " ".join([str(value)] * dim) + "\n"


@every_arch
def test_pretrained_vectors_fill_vocab_rows_after_init(name, tmp_path):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("4 8\n" + vector_line("t0", 0.5) + vector_line("t3", -1) + vector_line(PAD, 9) + vector_line("unseen", 7))
    weight = build(name, pretrained_vectors=str(vectors), init="normal").get_input_embeddings().weight
    assert torch.equal(weight[ENCODER.stoi["t0"]], torch.full((8,), 0.5))
    assert torch.equal(weight[ENCODER.stoi["t3"]], torch.full((8,), -1.0))
    assert torch.equal(weight[ENCODER.pad_id], torch.zeros(8))


def test_pretrained_vectors_without_header_and_with_spaces_in_tokens(tmp_path):
    itos = [PAD, UNK, "new york", "t0"]
    embedding = torch.nn.Embedding(len(itos), 8, padding_idx=0)
    vectors = tmp_path / "vectors.txt"
    vectors.write_text(vector_line("t0", 0.25) + vector_line("new york", 2) + "\n")
    assert load_vectors(embedding, vectors, itos, skip=0) == 2
    assert torch.equal(embedding.weight[2], torch.full((8,), 2.0))


@pytest.mark.parametrize("text", ["3 6\n" + vector_line("t0", 1), vector_line("t0", 1, dim=6), vector_line("t0", 1) + "t1 1 2\n",
                                  vector_line("t0", 1) + vector_line("t1", "x")])
def test_bad_pretrained_vectors_name_the_option(text, tmp_path):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text(text)
    with pytest.raises(ValueError, match="model.pretrained_vectors"):
        build("fasttext", pretrained_vectors=str(vectors))


def test_textcnn_without_kernel_sizes_names_the_option():
    with pytest.raises(ValueError, match="model.kernel_sizes"):
        build("textcnn", kernel_sizes=[])
